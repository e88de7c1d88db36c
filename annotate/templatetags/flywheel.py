from django import template
from django.utils.safestring import mark_safe

from annotate.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> str:
    """Render untrusted markdown; the output has been sanitised, so it is marked safe."""
    return mark_safe(render_markdown(text))  # noqa: S308 - sanitised by nh3 in render_markdown
