"""Models that publish themselves to websockets once a save or a delete commits.

``PublishableModel`` (an abstract model declaring where and what to publish in
class attributes or methods) and ``publish_model`` (the same options for a model
you cannot change) both register a ``Publication``: the same receivers serve
every registered model. ``pre_save`` / ``pre_delete`` refuse a mis-declared
model before the row is written; ``post_save`` / ``post_delete`` build the
message while the row is at hand (a deleted row's pk and relations are gone
later) and publish it with ``transaction.on_commit``: a rolled-back
transaction publishes nothing, so no page sees uncommitted data.

Only ``save()`` and ``delete()`` of an instance, and ``QuerySet.delete()``
(Django sends ``post_delete`` per row when a receiver listens), publish:
``QuerySet.update()``, ``bulk_create()``, ``bulk_update()``, raw SQL and
``loaddata`` (raw saves) do not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import redis
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models.signals import class_prepared, post_delete, post_save, pre_delete, pre_save

from .logsafe import text
from .publisher import RedisPublisher
from .redis_store import RedisMessage

logger = logging.getLogger("twisted_ws4redis.models")

#: The ``RedisPublisher`` keyword arguments an audience may give (no request:
#: there is none after the commit, so no SELF either).
AUDIENCE_KEYS = frozenset({"broadcast", "users", "groups", "sessions"})
ALL_FIELDS = "__all__"

Audience = Callable[[models.Model], dict]
Data = Callable[[models.Model], dict]


@dataclass(frozen=True)
class Publication:
    """Where one model's changes go (``facility`` and ``audience``, or
    ``audience_for(instance)`` returning ``RedisPublisher`` keyword arguments,
    a facility among them if it differs), what they carry (``fields``, a list
    or ``"__all__"``, or ``data(instance)`` returning a dict) and how long the
    message is kept (``expire``, default WS4REDIS_EXPIRE)."""

    model: type[models.Model]
    facility: str | None = None
    audience: dict | None = None
    audience_for: Audience | None = None
    fields: Sequence[str] | str | None = None
    data: Data | None = None
    expire: int | None = None

    @cached_property
    def problems(self) -> list[tuple[str, str, str]]:
        """(check id, message, hint) of each mistake in this declaration."""
        found = []
        if (self.audience is None) == (self.audience_for is None):
            found.append(
                (
                    "twisted_ws4redis.E040",
                    "declares no audience"
                    if self.audience is None
                    else "declares both a fixed audience and an audience method",
                    (
                        "Give exactly one: an audience (RedisPublisher keyword arguments, e.g. "
                        "{'users': ['john']}) or a method returning them; nobody is the default."
                    ),
                )
            )
        elif self.audience is not None and not _fixed_audience_ok(self.audience):
            found.append(
                (
                    "twisted_ws4redis.E041",
                    f"has an audience that names nobody or names something else: {text(repr(self.audience))}",
                    f"A dict of {', '.join(sorted(AUDIENCE_KEYS))}, at least one of them set.",
                )
            )
        if self.audience_for is None and not (isinstance(self.facility, str) and self.facility):
            found.append(("twisted_ws4redis.E042", "declares no facility", "For example 'chat'."))
        if (self.fields is None) == (self.data is None):
            found.append(
                (
                    "twisted_ws4redis.E043",
                    "declares no data" if self.fields is None else "declares both a field list and a data method",
                    (
                        f"Give exactly one: a list of field names (or '{ALL_FIELDS}', to publish every "
                        f"field) or a method returning the message's data."
                    ),
                )
            )
        elif self.fields is not None:
            found.extend(
                (
                    "twisted_ws4redis.E044",
                    message,
                    "Name concrete fields of the model (no many-to-many: they are saved after post_save).",
                )
                for message in self._field_problems()
            )
        if self.expire is not None and (type(self.expire) is not int or self.expire < 0):
            found.append(
                (
                    "twisted_ws4redis.E045",
                    f"has an expire that is no count of seconds: {text(repr(self.expire))}",
                    "None (WS4REDIS_EXPIRE), 0 (keep nothing) or more.",
                )
            )
        return found

    def _field_problems(self) -> Iterable[str]:
        if self.fields == ALL_FIELDS:
            return
        if isinstance(self.fields, str) or not isinstance(self.fields, (list, tuple)):
            yield f"has fields that are no list of names: {text(repr(self.fields))}"
            return
        for name in self.fields:
            try:
                field = self.model._meta.get_field(name)
            except (FieldDoesNotExist, TypeError):
                yield f"publishes the field {text(repr(name))}, which it does not have"
                continue
            if not getattr(field, "concrete", False) or field.many_to_many:
                yield f"publishes {text(repr(name))}, which is no concrete field"

    def field_data(self, instance: models.Model) -> dict:
        """The listed fields' values (a relation's as its key), by field name."""
        meta = self.model._meta
        names = self.fields or ()  # (set: checked by manage.py check, E043)
        fields = meta.concrete_fields if names == ALL_FIELDS else [meta.get_field(name) for name in names]
        return {field.name: field.value_from_object(instance) for field in fields}  # type: ignore[union-attr]  # concrete

    def prepare(self, instance: models.Model, event: str) -> tuple[RedisPublisher, RedisMessage]:
        """The publisher and the message for ``event`` on ``instance``, as it is now."""
        audience = dict(self.audience) if self.audience_for is None else dict(self.audience_for(instance))  # type: ignore[arg-type]  # E040: one is set
        facility = audience.pop("facility", self.facility)
        if not (isinstance(facility, str) and facility) or not AUDIENCE_KEYS.issuperset(audience):
            raise ImproperlyConfigured(
                f"The audience of {self.model._meta.label} must be RedisPublisher keyword "
                f"arguments ({', '.join(sorted(AUDIENCE_KEYS))}) and a facility, got "
                f"{text(repr(sorted(audience)))} and facility {text(repr(facility))}"
            )
        data = self.field_data(instance) if self.data is None else self.data(instance)
        message = {"model": self.model._meta.label_lower, "pk": instance.pk, "event": event, "data": data}
        return (RedisPublisher(facility=facility, **audience), RedisMessage(json.dumps(message, cls=DjangoJSONEncoder)))


def _fixed_audience_ok(audience: Any) -> bool:
    return (
        isinstance(audience, dict)
        and AUDIENCE_KEYS.issuperset(audience)
        and any(audience.get(key) for key in AUDIENCE_KEYS)
    )


#: model -> its Publication
_publications: dict[type[models.Model], Publication] = {}


def publish_model(
    model: type[models.Model] | None = None,
    *,
    facility: str | None = None,
    audience: dict | None = None,
    audience_for: Audience | None = None,
    fields: Sequence[str] | str | None = None,
    data: Data | None = None,
    expire: int | None = None,
) -> Any:
    """Make ``model`` publish its committed saves and deletes, e.g. in an
    ``AppConfig.ready()``: ``publish_model(Message, facility="chat",
    audience={"broadcast": True}, fields=["text"])``; without ``model``, a class
    decorator. A declaration's mistakes are ``manage.py check`` errors and
    raise ``ImproperlyConfigured`` when an instance is saved or deleted.
    Returns the model."""
    if model is None:
        return partial(
            publish_model,
            facility=facility,
            audience=audience,
            audience_for=audience_for,
            fields=fields,
            data=data,
            expire=expire,
        )
    _publications[model] = Publication(model, facility, audience, audience_for, fields, data, expire)
    uid = f"twisted_ws4redis.models:{model._meta.label_lower}"
    pre_save.connect(_refuse_if_misdeclared, sender=model, dispatch_uid=uid)
    pre_delete.connect(_refuse_if_misdeclared, sender=model, dispatch_uid=uid)
    post_save.connect(_saved, sender=model, dispatch_uid=uid)
    post_delete.connect(_deleted, sender=model, dispatch_uid=uid)
    return model


def _refuse_if_misdeclared(sender: type[models.Model], **kwargs: Any) -> None:
    """Before the row is written: a declaration's mistake stops the save or the delete."""
    problems = _publications[sender].problems
    if problems:
        check_id, message, hint = problems[0]
        raise ImproperlyConfigured(f"{sender._meta.label} {message} ({check_id}). {hint}")


def _saved(
    sender: type[models.Model], instance: models.Model, created: bool, raw: bool, using: str, **kwargs: Any
) -> None:
    if not raw:  # loaddata: the row as a fixture has it, not a change of the site's
        _publish_on_commit(sender, instance, "created" if created else "updated", using)


def _deleted(sender: type[models.Model], instance: models.Model, using: str, **kwargs: Any) -> None:
    _publish_on_commit(sender, instance, "deleted", using)


def _publish_on_commit(model: type[models.Model], instance: models.Model, event: str, using: str) -> None:
    publication = _publications[model]
    publisher, message = publication.prepare(instance, event)
    transaction.on_commit(
        partial(_publish, publisher, message, publication.expire, model, instance.pk, event), using=using
    )


def _publish(
    publisher: RedisPublisher, message: RedisMessage, expire: int | None, model: type[models.Model], pk: Any, event: str
) -> None:
    """After the commit: a failure is logged, the committed request goes on."""
    try:
        publisher.publish_message(message, expire)
    except redis.RedisError as exc:
        logger.error(  # noqa: TRY400 (one line per failure: a Redis outage must not flood the log with tracebacks)
            "%s %s (%s) was not published: %s: %s", model._meta.label, text(pk), event, type(exc).__name__, text(exc)
        )


class PublishableModel(models.Model):
    """An abstract model whose concrete subclasses publish
    ``{"model", "pk", "event", "data"}`` after each committed save or delete.
    A subclass declares where: ``ws4redis_facility`` and ``ws4redis_audience``
    (``RedisPublisher`` keyword arguments, e.g. ``{"broadcast": True}``), or a
    method ``get_ws4redis_audience(self)`` returning them (with a facility if
    it differs); and what: ``ws4redis_fields`` (field names, or ``"__all__"``)
    or a method ``get_ws4redis_data(self)`` returning a dict. There is no
    default audience nor data: publishing to everybody, or a whole row, by
    accident would leak. ``ws4redis_expire`` overrides WS4REDIS_EXPIRE."""

    ws4redis_facility: str | None = None
    ws4redis_audience: dict | None = None
    ws4redis_fields: Sequence[str] | str | None = None
    ws4redis_expire: int | None = None

    class Meta:
        abstract = True


def _register_publishable(sender: type[models.Model], **kwargs: Any) -> None:
    """Every concrete (or proxy) subclass of PublishableModel, once Django built it."""
    if issubclass(sender, PublishableModel):
        publish_model(
            sender,
            facility=sender.ws4redis_facility,
            audience=sender.ws4redis_audience,
            audience_for=getattr(sender, "get_ws4redis_audience", None),
            fields=sender.ws4redis_fields,
            data=getattr(sender, "get_ws4redis_data", None),
            expire=sender.ws4redis_expire,
        )


class_prepared.connect(_register_publishable, dispatch_uid="twisted_ws4redis.models.publishable")


def check_publishable_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An Error per mistake of each publishing model's declaration."""
    return [
        checks.Error(f"The model {message}", hint=hint, obj=model, id=check_id)
        for model, publication in _publications.items()
        if app_configs is None or model._meta.app_config in app_configs
        for check_id, message, hint in publication.problems
    ]
