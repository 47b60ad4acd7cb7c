"""The settings reference of the documentation, as reStructuredText, made from
``twisted_ws4redis.conf.RULES`` (where every setting is defined) so that the page
cannot drift from the code. Pure Python: ``tests/test_docs.py`` runs it without Sphinx."""

from __future__ import annotations

from twisted_ws4redis import conf


def _literal(text: str) -> str:
    """``text`` as an inline literal (reST has no escape inside one; backquotes never occur here)."""
    return f"``{text}``"


def setting_lines(name: str, rule: conf.Rule) -> list[str]:
    """One setting: a definition list item with its default, example, check id and description."""
    lines = [f".. _setting-{name}:", "", _literal(name)]
    lines.append(f"    :Default: {_literal(repr(rule.default))}")
    lines.append(f"    :Example: {_literal(f'{name} = {rule.example}')}")
    lines.append(f"    :Check id: {_literal(rule.check_id)}")
    lines.append("")
    lines.extend(f"    {line}" if line else "" for line in rule.doc.splitlines())
    lines.append("")
    return lines


def reference_lines() -> list[str]:
    """Every setting of ``RULES``, in their order, then the Django settings the server also reads."""
    lines: list[str] = []
    for name, rule in conf.RULES.items():
        lines.extend(setting_lines(name, rule))
    django_names = ", ".join(_literal(name) for name in conf._ORIGIN_SETTINGS)
    lines.append(
        f"Django's own settings that the server reads too, to decide which pages may connect: {django_names} "
        "(see :ref:`cross-site` and :ref:`dns-rebinding`)."
    )
    return lines
