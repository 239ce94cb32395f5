# The Python cell driver of airlock-agent (crates/airlock-agent/src/repl).
# Started as `python3 -c BOOTSTRAP DRIVER`; runs every cell in the globals
# of `__main__` (as `python3 -c` runs its code), and talks to the agent
# only on fds 3 (commands) and 4 (reports), never on stdout or stderr.
#
# Rich results, as Jupyter shows them (docs/protocol.md, "result"): the
# value of a cell's last expression (not None, no trailing `;`) and every
# `display(obj)` go to the agent as MIME bundles built from the IPython
# display protocol (`_repr_mimebundle_`, `_repr_html_`, `_repr_png_`, ...)
# plus `text/plain` from `repr`; matplotlib figures left open at the end of
# a cell (or shown with `plt.show()`) go as `image/png`, then are closed; an
# uncaught exception goes as `cell_error` besides its traceback on stderr.
# A figure goes to the agent as its raw pixels (PIXELS_MIME), which the
# host writes as `image/png` natively: no front end sees them.
import os, sys, signal, threading

# Common modules, imported once so that a cell importing them is fast.
import json, re, math, random, collections, itertools, functools, datetime
import pathlib, subprocess, io, time, string, textwrap, csv, statistics, traceback
import ast, base64, builtins, contextlib, importlib.abc, importlib.util, warnings
import gc, struct, zlib

COMMANDS, REPORTS = 3, 4
os.set_inheritable(COMMANDS, False)
os.set_inheritable(REPORTS, False)
commands = os.fdopen(COMMANDS, "rb", buffering=0)
main = sys.modules["__main__"].__dict__
INT = {signal.SIGINT}

# A result's bundle may not be larger as JSON: past it, representations are
# dropped. Its payload (the bundle and two flags) stays under the agent's
# limit, airlock_protocol::result::MAX_RESULT_BYTES (checked by a test).
RESULT_CAP = 16 * 1024 * 1024 - 2048
# Figures go to the host as raw pixels (8-bit RGB or RGBA, base64), which
# it writes as PNG natively, up to this many bytes of pixels each
# (airlock_protocol::result::MAX_RAW_PIXEL_BYTES, checked by a test) and
# PIXELS_PER_CELL in a cell (a cell's results count against its output
# cap as sent); past either the driver writes the PNG itself.
PIXELS_MIME = "application/x-airlock-raw-pixels"
PIXELS_MAX = 4 * 1024 * 1024
PIXELS_PER_CELL = 16 * 1024 * 1024
# Stands for a Pixels in the JSON of a report until its bytes go in
# (random: no string a cell makes can match it).
PIXELS_TOKEN = "airlock-pixels-" + os.urandom(12).hex() + "-"
# Modules the image wants in the warm interpreter (python-data: numpy,
# pandas, matplotlib), one a line.
PRELOAD = "/etc/airlock/python-preload"
# Charts the python-data warm-up makes before `ready` (the second one
# runs the paths only a second chart takes).
WARM_CHARTS = 2

# The representations of the IPython display protocol, in the order tried.
REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/pdf", "_repr_pdf_"),
    ("application/javascript", "_repr_javascript_"),
)

# The running cell's id (None between cells), and the lock that keeps a
# report whole when threads display at once.
state = {"cell": None, "pixels": 0}
send_lock = threading.Lock()


def report(line):
    os.write(REPORTS, (line + "\n").encode())


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_line():
    line = b""
    while not line.endswith(b"\n"):
        chunk = commands.read(1)
        if not chunk:
            sys.exit(0)  # the agent closed the channel
        line += chunk
    return line[:-1].decode()


def flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass


def note(message):
    try:
        print(f"[airlock: {message}]", file=sys.stderr)
    except Exception:
        pass


def send(kind, payload):
    # `result` or `cell_error` of the running cell; dropped outside one (a
    # thread that outlived its cell). Output first, then the report, then
    # wait for the agent's `ack`: it has read the output written before
    # the report, so nothing printed after can overtake it. SIGINT held
    # off so that a report is never cut.
    parts = wire_parts(payload)
    with send_lock:
        cell = state["cell"]
        if cell is None:
            return
        flush()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, INT)
        try:
            write_all(REPORTS, f"{kind} {cell} {sum(map(len, parts))}\n".encode())
            for part in parts:
                write_all(REPORTS, part)
            if read_line() != "ack":
                raise SystemExit("airlock: the agent did not acknowledge a result")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Pixels:
    # A figure's pixels as they go on the wire (PIXELS_MIME): the JSON
    # object's head and its base64 data, spliced into the report as bytes
    # (json.dumps of a 1.2 MB string cost 70-100 ms under TCG). With a
    # background, the data is masked (airlock_protocol's
    # PixelEncoding::Masked): a bitmask of the pixels that differ from
    # it, then those pixels.
    def __init__(self, width, height, channels, data, background=None):
        head = f'{{"width":{width},"height":{height},"channels":{channels},'
        if background is not None:
            head += f'"encoding":"masked","background":{json.dumps(background)},'
        self.head = (head + '"data":"').encode()
        self.data = data  # base64, ASCII bytes
        self.size = len(self.head) + len(self.data) + 2


def wire_parts(payload):
    # The report's JSON body as a list of bytes, Pixels spliced in without
    # copying their data.
    pixels = []

    def stand_in(obj):
        if isinstance(obj, Pixels):
            pixels.append(obj)
            return f"{PIXELS_TOKEN}{len(pixels) - 1}"
        raise TypeError(f"{type(obj).__name__} is not JSON")

    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=stand_in).encode()
    parts = []
    for i, item in enumerate(pixels):
        before, text = text.split(json.dumps(f"{PIXELS_TOKEN}{i}").encode(), 1)
        parts += [before, item.head, item.data, b'"}']
    parts.append(text)
    return parts


def real_method(obj, name):
    # As IPython: no display methods of classes, nor of objects that answer
    # any attribute (proxies, mocks).
    if isinstance(obj, type):
        return None
    try:
        if hasattr(obj, "_ipython_canary_method_should_not_exist_"):
            return None
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def is_binary(mime):
    return (mime.startswith("image/") and mime != "image/svg+xml") or mime in (
        "application/pdf",
        "application/octet-stream",
    )


def encode(mime, value):
    # One representation as it goes on the wire, or None when it cannot.
    if isinstance(value, tuple) and len(value) == 2:
        value = value[0]  # (data, metadata)
    if value is None:
        return None
    if is_binary(mime):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(value)).decode("ascii")
        if isinstance(value, str):
            return value.strip()  # base64 already, as IPython takes it
        return None
    if mime == "application/json" or mime.endswith("+json"):
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return None
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def figure_image(fig):
    # A figure as Pixels for the host to write as PNG, or as PNG bytes.
    # Drawn once on its Agg canvas when it has one and savefig's rcParams
    # are the defaults (what savefig would give: same pixels, no
    # metadata): its pixels go raw (RGB when every pixel is opaque, a
    # quarter less to send) within PIXELS_MAX and the cell's
    # PIXELS_PER_CELL, else png_of_rgba writes them; savefig otherwise.
    # Under TCG, zlib level 1 was 150-280 ms of a chart cell, base64 of
    # the pixels is 20-35 ms, and the host compresses in about 1 ms.
    fast = fast_figure_pixels(fig)
    if fast is not None:
        height, width, _ = fast.shape
        opaque = bool((fast[:, :, 3] == 255).all())
        channels = 3 if opaque else 4
        size = width * height * channels
        if size <= PIXELS_MAX and state["pixels"] + size <= PIXELS_PER_CELL:
            state["pixels"] += size
            return pixels_of(fast, channels)
        return png_of_rgba(fast)
    return figure_savefig(fig)


def pixels_of(rgba, channels):
    # Pixels of an RGBA array (rows x columns x 4), `channels` of each
    # sent: masked against the first pixel (a chart's background) when
    # that is smaller, as it is for a chart (a 640x480 line chart: about
    # 120 KB of base64 instead of 1.2 MB; under TCG a cell that sent 1.2 MB
    # took 110-150 ms more than one that sent 100 bytes), else every pixel.
    numpy = sys.modules["numpy"]
    height, width, _ = rgba.shape
    rgba = numpy.ascontiguousarray(rgba)
    flat = rgba.reshape(-1, 4)
    words = flat.view(numpy.uint32).ravel()
    if words.size:
        differs = words != words[0]
        count = int(numpy.count_nonzero(differs))
        if (words.size + 7) // 8 + count * channels < words.size * channels:
            data = numpy.packbits(differs).tobytes() + flat[differs][:, :channels].tobytes()
            background = [int(v) for v in flat[0, :channels]]
            return Pixels(width, height, channels, base64.b64encode(data), background)
    pixels = numpy.ascontiguousarray(rgba[:, :, :3]) if channels == 3 else rgba
    return Pixels(width, height, channels, base64.b64encode(pixels))


def figure_savefig(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def fast_figure_pixels(fig):
    # The figure's RGBA pixels (a numpy array, rows x columns x 4) drawn
    # on its own Agg canvas, or None when savefig would draw differently.
    agg = sys.modules.get("matplotlib.backends.backend_agg")
    numpy = sys.modules.get("numpy")
    mpl = sys.modules.get("matplotlib")
    if agg is None or numpy is None or mpl is None:
        return None
    if not isinstance(getattr(fig, "canvas", None), agg.FigureCanvasAgg):
        return None
    rc = mpl.rcParams
    try:
        defaults = (
            rc["savefig.dpi"] == "figure"
            and rc["savefig.facecolor"] == "auto"
            and rc["savefig.edgecolor"] == "auto"
            and not rc["savefig.transparent"]
            and rc["savefig.bbox"] is None
        )
    except (KeyError, ValueError):
        return None
    if not defaults:
        return None
    fig.canvas.draw()
    return numpy.asarray(fig.canvas.buffer_rgba())


def png_chunk(tag, body):
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_of_rgba(rgba):
    # An 8-bit PNG of RGBA pixels: RGB when every pixel is opaque (a
    # quarter less to compress), filter None on every row, zlib level 1.
    numpy = sys.modules["numpy"]
    height, width, _ = rgba.shape
    opaque = bool((rgba[:, :, 3] == 255).all())
    channels = 3 if opaque else 4
    rows = numpy.empty((height, width * channels + 1), numpy.uint8)
    rows[:, 0] = 0
    # One strided copy into a view of the rows (a reshape of the slice
    # would copy once more). Setting `shape` raises rather than copy, so
    # the pixels can never land in a temporary.
    pixels = rows[:, 1:]
    pixels.shape = (height, width, channels)
    pixels[...] = rgba[:, :, :channels]
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if opaque else 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 1))
        + png_chunk(b"IEND", b"")
    )


def special_png(obj):
    # PNG of the types that have no _repr_png_ of their own: matplotlib
    # figures (bytes, or Pixels for the host to write) and PIL images.
    figure = sys.modules.get("matplotlib.figure")
    if figure is not None and isinstance(obj, figure.Figure):
        return figure_image(obj)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(obj, pil.Image):
        buf = io.BytesIO()
        obj.save(buf, format="PNG")
        return buf.getvalue()
    return None


def plain(obj):
    try:
        return repr(obj)
    except Exception as e:
        return f"<{type(obj).__name__} object (repr failed: {e!r})>"


def bundle_of(obj, include=None, exclude=None):
    data = {}
    method = real_method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            try:
                got = method(include=include, exclude=exclude)
            except TypeError:
                got = method()
            if isinstance(got, tuple):
                got = got[0]
            for mime, value in (got or {}).items():
                value = encode(mime, value)
                if value is not None:
                    data[mime] = value
        except Exception as e:
            note(f"{type(obj).__name__}._repr_mimebundle_() failed: {e!r}")
    for mime, name in REPR_METHODS:
        if mime in data:
            continue
        method = real_method(obj, name)
        if method is None:
            continue
        try:
            value = encode(mime, method())
        except Exception as e:
            note(f"{type(obj).__name__}.{name}() failed: {e!r}")
            continue
        if value is not None:
            data[mime] = value
    if "image/png" not in data:
        try:
            png = special_png(obj)
        except Exception as e:
            note(f"{type(obj).__name__} could not be drawn: {e!r}")
            png = None
        if isinstance(png, Pixels):
            data[PIXELS_MIME] = png
        elif png is not None:
            data["image/png"] = base64.b64encode(png).decode("ascii")
    if "text/plain" not in data:
        data["text/plain"] = plain(obj)
    # The raw pixels are the figure's image/png to include and exclude.
    if include is not None:
        data = {k: v for k, v in data.items() if shown_as(k) in include}
    if exclude is not None:
        data = {k: v for k, v in data.items() if shown_as(k) not in exclude}
    return data


def shown_as(mime):
    return "image/png" if mime == PIXELS_MIME else mime


def wire_size(value):
    # Bytes of a value in a report's JSON (a Pixels knows its own).
    if isinstance(value, Pixels):
        return value.size
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def within_cap(data):
    # Drops the largest representations but text/plain until the result
    # fits its cap; cuts text/plain last. Each entry is sized once, as in
    # `{"data":{...}}`.
    sizes = {k: wire_size(k) + 1 + wire_size(v) for k, v in data.items()}

    def size():
        return len('{"data":{}}') + sum(sizes.values()) + max(0, len(sizes) - 1)

    truncated = False
    while size() > RESULT_CAP:
        others = [k for k in data if k != "text/plain"]
        truncated = True
        if others:
            largest = max(others, key=sizes.get)
            del data[largest], sizes[largest]
        else:
            text = data.get("text/plain", "")
            data["text/plain"] = text[: max(0, len(text) - (size() - RESULT_CAP) - 64)]
            sizes["text/plain"] = wire_size("text/plain") + 1 + wire_size(data["text/plain"])
    return data, truncated


def show(obj, is_main_result=False, include=None, exclude=None):
    data = bundle_of(obj, include, exclude)
    if not data:
        return
    data, truncated = within_cap(data)
    payload = {"data": data}
    if is_main_result:
        payload["is_main_result"] = True
    if truncated:
        payload["truncated"] = True
    try:
        send("result", payload)
    except (TypeError, ValueError) as e:
        note(f"a result of {type(obj).__name__} could not be sent: {e!r}")
    figure = sys.modules.get("matplotlib.figure")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if figure is not None and pyplot is not None and isinstance(obj, figure.Figure):
        pyplot.close(obj)  # shown: not again at the end of the cell


def display(*objs, include=None, exclude=None, raw=False, **_ignored):
    """Shows each object as a rich result (IPython's display())."""
    for obj in objs:
        if raw and isinstance(obj, dict):
            data = {}
            for mime, value in obj.items():
                value = encode(mime, value)
                if value is not None:
                    data[mime] = value
            data, truncated = within_cap(data)
            payload = {"data": data}
            if truncated:
                payload["truncated"] = True
            send("result", payload)
        else:
            show(obj, include=include, exclude=exclude)


def show_figures():
    # Every open matplotlib figure, in the order made, then closed.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        for num in pyplot.get_fignums():
            show(pyplot.figure(num))
    finally:
        pyplot.close("all")


def patch_pyplot(pyplot):
    if getattr(pyplot.show, "_airlock", False):
        return

    def show_open_figures(*args, **kwargs):
        """Shows every open figure as an image/png result, then closes it."""
        show_figures()

    show_open_figures._airlock = True
    pyplot.show = show_open_figures


class PyplotHook(importlib.abc.MetaPathFinder):
    # Makes `plt.show()` show figures, the first time pyplot is imported.
    def find_spec(self, name, path, target=None):
        if name != "matplotlib.pyplot":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch_pyplot(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def preload():
    # The image's modules, imported before `ready` without a word on
    # stderr (a word there would land in the first cell's output).
    try:
        with open(PRELOAD) as f:
            names = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    except OSError:
        return
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:
                pass
        warm_drawing()
    # What the warm-up left is collected now, and what is left (the
    # modules) is frozen out of the collector: a clone's collections then
    # never walk, and never write to, the template's objects (each write
    # copies a page of the template's memory).
    gc.collect()
    gc.freeze()


def warm_drawing():
    # With pyplot preloaded (python-data): before `ready` (so in the
    # template), a chart made the way a cell makes one, twice: a
    # 1,000-row frame plotted through pandas and pyplot, titled, turned
    # into the driver's result bundle (nothing sent) and closed. Fonts,
    # text layout, pandas' plotting module, pyplot's figure manager and
    # the allocator's heap are then warm in every clone. The warm-up
    # draws no random numbers, and its figures are closed, so the user's
    # first figure is still number 1.
    pyplot = sys.modules.get("matplotlib.pyplot")
    pandas = sys.modules.get("pandas")
    if pyplot is None:
        return
    try:
        for _ in range(WARM_CHARTS):
            x = list(range(1000))
            y = [((i * 7919) % 1000) / 37.0 for i in x]
            if pandas is not None:
                pandas.DataFrame({"x": x, "y": y}).plot(x="x", y="y")
            else:
                pyplot.plot(x, y)
            pyplot.title("warm")
            for num in pyplot.get_fignums():
                wire_parts({"data": bundle_of(pyplot.figure(num), None, None)})
            pyplot.close("all")
    except Exception:
        pass
    finally:
        state["pixels"] = 0


def exit_status(code):
    # As the interpreter does for an uncaught SystemExit.
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def split_last_expression(source):
    # The cell's statements, and its last expression when it ends with one
    # that is to be shown (as Jupyter: not when it ends with `;`).
    # `source` is bytes (a coding declaration is honoured); offsets count
    # UTF-8 bytes.
    tree = ast.parse(source, "<string>", "exec")
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return tree, None
    last = tree.body[-1]
    lines = source.splitlines()
    rest = lines[last.end_lineno - 1][last.end_col_offset :].decode("utf-8", "replace")
    if rest.split("#", 1)[0].strip().startswith(";"):
        return tree, None
    tree.body.pop()
    return tree, ast.Expression(last.value)


# First words of a statement that is not an expression (not the soft
# keywords `match`, `case`, `type`: each can start an expression).
STATEMENT_WORDS = frozenset(
    b"def class import from if for while with try return raise del pass "
    b"assert global nonlocal break continue async".split()
)


def last_top_line(source):
    # The offset of the last line that starts at column 0 with something
    # else than a comment or a closing bracket, or None.
    offset = len(source)
    for line in reversed(source.splitlines(keepends=True)):
        offset -= len(line)
        if line[:1] not in (b"", b" ", b"\t", b"\f", b"\r", b"\n", b"#", b")", b"]", b"}"):
            return offset
    return None


def first_word(tail):
    word = tail[:16].split(None, 1)[0] if tail.strip() else b""
    for i, byte in enumerate(word):
        if not (byte == 95 or 48 <= byte <= 57 or 65 <= byte <= 90 or 97 <= byte <= 122):
            return word[:i]
    return word


def compile_text(source, mode):
    return compile(source, "<string>", mode, dont_inherit=True)


def compile_cell(source):
    # The code of the cell's statements, and of its last expression when
    # it is to be shown (or None): split_last_expression's answer, found
    # for the common cells from the text, without building an AST. An
    # AST costs a fresh clone of a memory template about as much again as
    # the cell (large C code, the AST's conversions, that TCG translates
    # anew in every clone); compiling the text is what a cell always did.
    #
    # The tail is the cell from its last line at column 0. When the head
    # before it compiles alone, the tail starts a top-level statement
    # (the head ends outside any bracket, string or continuation), and
    # the cell's statements are the head's and then the tail's (a tail
    # that continues a compound statement, `else:` and the like, does
    # not compile alone). So: a tail that is one expression (it compiles
    # in `eval` mode, which a trailing `;` does not) is the value; a tail
    # whose first word starts a statement, and holds no `;`, has none.
    # Anything else, and a coding declaration (the tail alone would be
    # read as UTF-8), takes the AST.
    start = last_top_line(source)
    if start is not None and b"coding" not in b"".join(source.splitlines(keepends=True)[:2]):
        head, tail = source[:start], source[start:]
        try:
            head_code = compile_text(head, "exec")
        except SyntaxError:
            head_code = None
        if head_code is None:
            pass
        elif tail[:1] == b"@" or first_word(tail) in STATEMENT_WORDS:
            # One statement, unless a `;` may end it and start another.
            if b";" not in tail:
                return compile_text(source, "exec"), None
        else:
            try:
                # Leading newlines keep the tail's line numbers.
                return head_code, compile_text(b"\n" * head.count(b"\n") + tail, "eval")
            except SyntaxError:
                pass
    body, last = split_last_expression(source)
    last_code = None if last is None else compile(last, "<string>", "eval", dont_inherit=True)
    return compile(body, "<string>", "exec", dont_inherit=True), last_code


def cell_error(e, tb):
    try:
        send(
            "cell_error",
            {
                "name": type(e).__name__,
                "value": str(e),
                "traceback": "".join(traceback.format_exception(type(e), e, tb)),
            },
        )
    except Exception:
        pass


def run(path):
    with open(path, "rb") as f:
        source = f.read()
    before = set(threading.enumerate())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, INT)
    try:
        try:
            body, last = compile_cell(source)
            exec(body, main)
            if last is not None:
                value = eval(last, main)
                if value is not None:
                    show(value, is_main_result=True)
            # As at interpreter exit: wait for the threads the cell started.
            for thread in threading.enumerate():
                if thread not in before and not thread.daemon:
                    thread.join()
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, INT)
        return 0
    except SystemExit as e:
        return exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__
        # Drop the driver's own frames: the traceback starts in the cell.
        while tb is not None and tb.tb_frame.f_code.co_filename != "<string>":
            tb = tb.tb_next
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        cell_error(e, tb)
        return 130 if isinstance(e, KeyboardInterrupt) else 1


def with_env(pairs, body):
    saved = {name: os.environ.get(name) for name, _ in pairs}
    os.environ.update(pairs)
    try:
        return body()
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def end_cell():
    # Figures left open are the cell's last results.
    try:
        show_figures()
    except Exception as e:
        note(f"figures could not be shown: {e!r}")


def serve():
    signal.pthread_sigmask(signal.SIG_BLOCK, INT)
    builtins.display = display
    sys.meta_path.insert(0, PyplotHook())
    if "matplotlib.pyplot" in sys.modules:
        patch_pyplot(sys.modules["matplotlib.pyplot"])
    preload()
    report("ready")
    while True:
        words = read_line().split(" ")
        if words[0] == "cell" and len(words) == 4:
            cell_id, path, count = words[1], words[2], int(words[3])
            pairs = [read_line().split("=", 1) for _ in range(count)]
            with send_lock:
                state["cell"] = cell_id
                state["pixels"] = 0
            try:
                status = with_env(pairs, lambda: run(path))
                end_cell()
            except KeyboardInterrupt:
                status = 130
            with send_lock:
                state["cell"] = None
            flush()
            # A SIGINT that came after the cell ended must not hit the next.
            while signal.SIGINT in signal.sigpending():
                signal.sigwait(INT)
            report(f"done {cell_id} {status}")
        elif words[0] == "reseed" and len(words) == 2:
            # After a restore from a memory template: the kernel was just
            # reseeded; `random` draws its new seed from it (os.urandom),
            # and so does numpy's global generator when it was imported
            # (python-data preloads it: every clone would share its stream).
            random.seed()
            numpy_random = sys.modules.get("numpy.random")
            if numpy_random is not None:
                try:
                    numpy_random.seed()
                except Exception:
                    pass
            report("reseeded")
        else:
            report("error unknown command")


serve()
