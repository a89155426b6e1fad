"""Error analysis in the browser (``dcase-t6 explore``): ``analysis`` (systems scored and ranked query by query,
with the very numbers of ``evaluate``), ``charts`` (matplotlib SVG figures), ``pages`` (the site's pages,
rendered with Jinja2 from ``templates/`` and ``static/``), ``server`` (a local Werkzeug server with HTTP Range
audio) and ``site`` (the same pages written as a static folder)."""
