from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Users of the tests: admin, john and mary (group chatusers), ann (no group); password 'secret'."

    def handle(self, *args, **options):
        chatusers, _ = Group.objects.get_or_create(name="chatusers")
        staff, _ = Group.objects.get_or_create(name="staff")
        for name, groups in (("admin", [staff]), ("john", [chatusers]), ("mary", [chatusers, staff]), ("ann", [])):
            user = User.objects.create_user(name, password="secret")
            user.groups.set(groups)
