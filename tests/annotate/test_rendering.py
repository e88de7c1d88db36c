from annotate.rendering import render_markdown


def test_raw_html_is_shown_as_text_and_never_interpreted():
    html = render_markdown('<script>alert(1)</script><img src=x onerror="alert(2)">')
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html


def test_markdown_and_code_blocks_render():
    html = render_markdown("**bold**\n\n```python\nprint('<b>')\n```")
    assert "<strong>bold</strong>" in html
    assert '<pre><code class="language-python">' in html and "&lt;b&gt;" in html


def test_dangerous_links_are_not_links():
    html = render_markdown("[x](javascript:alert(1)) [y](https://example.org)")
    assert 'href="javascript' not in html
    assert 'href="https://example.org"' in html
