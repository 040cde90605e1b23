"""Charts in notebooks with no network: Altair's HTML renderer loads Vega's JavaScript from a CDN,
so a notebook offline (or saved and opened later without one) shows empty boxes. Importing
minigpt.show calls use_offline_renderer(), which puts vl-convert's Vega bundle inside each chart's
HTML instead, guarded so that it runs once a page.
"""

import functools
import json
import uuid
import warnings

import altair as alt

OFFLINE_HTML = """<div id="{div}"></div>
<script type="text/javascript">
if (!window.vegaEmbed) {{ (function () {{ {bundle}
}})(); }}
vegaEmbed(document.getElementById("{div}"), {spec}, {options}).catch(console.error);
</script>"""


@functools.cache
def _vega_bundle() -> str:
    from altair.utils._importers import import_vl_convert, vl_version_for_vl_convert
    return import_vl_convert().javascript_bundle(vl_version=vl_version_for_vl_convert())


def offline_renderer(spec: dict, **metadata) -> dict:
    """A chart as HTML with Vega's JavaScript inside (vl-convert's bundle, about 0.9 MB a chart),
    so it draws with no network. Altair's own "inline" template is a whole page that declares the
    bundle's names globally: in Jupyter and VS Code, where a notebook's outputs share one page, the
    second chart's script then fails. Here the bundle runs inside a function, once a page."""
    div = f"minigpt-chart-{uuid.uuid4().hex}"
    options = json.dumps(metadata.get("embed_options") or {"mode": "vega-lite"})
    return {"text/html": OFFLINE_HTML.format(div=div, bundle=_vega_bundle(),
                                             spec=json.dumps(spec), options=options),
            "text/plain": "<a chart: displayed where HTML is>"}


def use_offline_renderer() -> None:
    """Draw charts offline unless the user chose a renderer, and lift the cap on a chart's rows
    (a 128-token head is 16,384 cells, over Altair's default cap of 5,000)."""
    if alt.data_transformers.active == "default":
        alt.data_transformers.enable("default", max_rows=None)
    if alt.renderers.active != "default":
        return
    try:
        import vl_convert  # noqa: F401
    except ImportError:
        warnings.warn("minigpt.show: charts load Vega's JavaScript from a CDN; pip install "
                      "'minigpt[notebook]' (vl-convert-python) to draw them offline", stacklevel=3)
        return
    alt.renderers.register("minigpt-offline", offline_renderer)
    alt.renderers.enable("minigpt-offline")

