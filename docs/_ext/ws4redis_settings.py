"""Sphinx extension: ``.. ws4redis-settings::`` renders every setting of
``twisted_ws4redis.conf.RULES`` (see settings_reference.py)."""

from __future__ import annotations

from docutils import nodes
from docutils.statemachine import StringList
from settings_reference import reference_lines
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from twisted_ws4redis import conf


class SettingsDirective(SphinxDirective):
    """Parses the generated reST in place, so its roles and labels work as if written in the page."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(conf.__file__)
        container = nodes.container(classes=["ws4redis-settings"])
        content = StringList(reference_lines(), source="twisted_ws4redis/conf.py")
        nested_parse_with_titles(self.state, content, container)
        return [container]


def setup(app: Sphinx) -> dict:
    app.add_directive("ws4redis-settings", SettingsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
