"""Rich results of the `python-data` image through the server's real
clients: a REST session (httpx) returns `df.head()` as HTML and a figure
as a base64 PNG of the figure's size; the official Python `mcp` client
gets a chart from `run_code` as an image content item.

Usage: data_client.py URL KEY
Prints one `ok ...` line per check; any failure raises.
"""

import asyncio
import base64
import struct
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

# A cold python-data VM under TCG: boot and the data stack's imports.
TIMEOUT = 300
CELL_TIMEOUT_S = 120

FRAME = """import pandas as pd
df = pd.DataFrame({"x": range(10), "y": [v * v for v in range(10)]})
df.head()"""

# Figures the driver sends as pixels in each of their layouts: a chart
# (opaque, masked against its background), a translucent one (RGBA,
# masked) and noise over the whole figure (every pixel: masking would not
# make it smaller). Each draws `fig` the same way every time.
FIGURES = {
    "a line chart": """fig, ax = plt.subplots()
ax.plot(df["x"], df["y"]);""",
    "a translucent chart": """fig, ax = plt.subplots()
fig.patch.set_alpha(0.5)
ax.plot(df["x"], df["y"]);""",
    "noise": """import numpy as np
fig = plt.figure()
fig.figimage(np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8));""",
}

# The PNG the client got (the host wrote it from the figure's pixels, not
# savefig), decoded by PIL in the guest, against the same figure saved by
# savefig: the same pixels.
SAME_PIXELS = """import base64, io, numpy as np
from PIL import Image
{draw}
buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
got = np.asarray(Image.open(io.BytesIO(base64.b64decode(PNG))).convert("RGBA"))
want = np.asarray(Image.open(buf).convert("RGBA"))
print(got.shape, bool((got == want).all()))"""

MCP_CHART = """import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [1, 4, 9])
plt.show()"""


def png_size(png: bytes):
    """(width, height) from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:16]
    assert png[12:16] == b"IHDR", png[:32]
    return struct.unpack(">II", png[16:24])


def rest(url, key):
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=TIMEOUT, headers=headers) as c:
        created = c.post("/v1/sessions", json={"language": "python", "image": "python-data"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        try:
            r = c.post(f"/v1/sessions/{sid}/exec", json={"code": FRAME, "timeout_s": CELL_TIMEOUT_S})
            cell = r.json()
            assert r.status_code == 200 and cell["exit_code"] == 0, r.text
            [main] = cell["results"]
            assert main["is_main_result"], main
            assert "<table" in main["data"]["text/html"], main
            assert "x" in main["data"]["text/plain"], main
            print("ok df.head() comes back as text/html and text/plain")

            for name, draw in FIGURES.items():
                code = "import matplotlib.pyplot as plt\n" + draw
                r = c.post(f"/v1/sessions/{sid}/exec", json={"code": code, "timeout_s": CELL_TIMEOUT_S})
                cell = r.json()
                assert r.status_code == 200 and cell["exit_code"] == 0, r.text
                pngs = [res["data"]["image/png"] for res in cell.get("results", []) if "image/png" in res["data"]]
                assert len(pngs) == 1, cell
                size = png_size(base64.b64decode(pngs[0]))
                assert size == (640, 480), size
                print(f"ok {name} comes back as a base64 PNG of {size[0]}x{size[1]}")

                code = f"PNG = {pngs[0]!r}\n" + SAME_PIXELS.format(draw=draw)
                r = c.post(f"/v1/sessions/{sid}/exec", json={"code": code, "timeout_s": CELL_TIMEOUT_S})
                cell = r.json()
                assert r.status_code == 200 and cell["exit_code"] == 0, r.text
                assert cell["stdout"] == "(480, 640, 4) True\n", (name, cell)
                print(f"ok the PNG of {name} decodes to savefig's pixels")
        finally:
            assert c.delete(f"/v1/sessions/{sid}").status_code == 204


async def mcp(url, key):
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with client:
        async with streamable_http_client(url + "/mcp", http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                await session.list_tools()  # the output schemas, which call_tool checks against
                result = await session.call_tool("run_code", {
                    "code": MCP_CHART, "image": "python-data", "timeout_s": CELL_TIMEOUT_S,
                })
                assert not result.is_error, result.content
                images = [block for block in result.content if block.type == "image"]
                assert len(images) == 1, result.content
                assert images[0].mime_type == "image/png", images[0].mime_type
                size = png_size(base64.b64decode(images[0].data))
                assert size == (640, 480), size
                structured = result.structured_content
                assert structured["exit_code"] == 0, structured
                marker = structured["results"][-1]["data"]["image/png"]
                assert "image content" in marker, marker
                print(f"ok run_code's chart is an MCP image content item ({size[0]}x{size[1]} PNG)")


def main():
    url, key = sys.argv[1], sys.argv[2]
    rest(url, key)
    asyncio.run(mcp(url, key))


if __name__ == "__main__":
    main()
