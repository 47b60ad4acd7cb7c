from django import forms
from django.contrib.auth import get_user_model


class UserMessageForm(forms.Form):
    """A message to one other user."""

    user = forms.ModelChoiceField(queryset=None, to_field_name="username", empty_label=None)
    message = forms.CharField(max_length=2000)

    def __init__(self, sender, *args, **kwargs):
        super().__init__(*args, **kwargs)
        users = get_user_model().objects.filter(is_active=True).exclude(pk=sender.pk)
        self.fields["user"].queryset = users.order_by("username")

    @property
    def addressee(self) -> str:
        return self.cleaned_data["user"].get_username()


class GroupMessageForm(forms.Form):
    """A message to one of the sender's groups, or to all of them."""

    ALL = "*"

    group = forms.ChoiceField()
    message = forms.CharField(max_length=2000)

    def __init__(self, sender, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = list(sender.groups.order_by("name").values_list("name", flat=True))
        choices = [(name, name) for name in names]
        if len(names) > 1:
            choices.insert(0, (self.ALL, "All my groups"))
        self.fields["group"].choices = choices

    @property
    def addressee(self) -> str:
        group = self.cleaned_data["group"]
        return "all my groups" if group == self.ALL else group
