"""MCP client checks of Airlock with the official Python `mcp` package.

Usage: mcp_client.py stdio AIRLOCK_BINARY      (spawns `airlock mcp`)
       mcp_client.py http URL KEY              (streamable HTTP at URL/mcp)

Lists the tools, checks each has a description and an input schema, runs
code with `run_code`, and makes a
session round trip. Prints one `ok ...` line per check; any failure raises.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

EXPECTED = {
    "run_code",
    "create_session",
    "exec_in_session",
    "write_file",
    "read_file",
    "list_files",
    "install_packages",
    "close_session",
    "pause_session",
    "resume_session",
    "fork_session",
}


def text_of(result):
    return "".join(block.text for block in result.content if getattr(block, "type", "") == "text")


def json_of(result):
    """A tool's JSON: its structured content, which its first text item repeats."""
    first = result.content[0]
    assert first.type == "text", result
    assert result.structured_content == json.loads(first.text), result
    return result.structured_content


async def check(session: ClientSession):
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    missing = EXPECTED - tools.keys()
    assert not missing, f"missing tools {missing}: {sorted(tools)}"
    for tool in tools.values():
        assert tool.description and len(tool.description) > 80, f"{tool.name}: short description"
        assert "Example" in tool.description, f"{tool.name}: no example in its description"
        assert tool.input_schema.get("type") == "object", f"{tool.name}: {tool.input_schema}"
        assert (tool.output_schema or {}).get("type") == "object", f"{tool.name}: {tool.output_schema}"
    print(f"ok tools listed: {sorted(tools)}")

    result = await session.call_tool("run_code", {"language": "python", "code": "print(6 * 7)"})
    assert not result.is_error, text_of(result)
    answer = json_of(result)
    assert answer["exit_code"] == 0 and answer["stdout"] == "42\n", answer
    print("ok run_code printed 42")

    bad = await session.call_tool("run_code", {"language": "cobol", "code": "x"})
    assert bad.is_error and "language" in text_of(bad), text_of(bad)
    print("ok a bad language is a tool error the model can read")

    created = await session.call_tool("create_session", {"language": "python"})
    assert not created.is_error, text_of(created)
    sid = json_of(created)["id"]
    first = await session.call_tool("exec_in_session", {"session_id": sid, "code": "x = 20"})
    assert not first.is_error, text_of(first)
    second = await session.call_tool("exec_in_session", {"session_id": sid, "code": "print(x + 1)"})
    assert json_of(second)["stdout"] == "21\n", text_of(second)
    value = await session.call_tool("exec_in_session", {"session_id": sid, "code": "x * 2"})
    assert json_of(value)["results"][0]["data"]["text/plain"] == "40", text_of(value)
    assert value.content[1].type == "text" and value.content[1].text == "40", value.content
    print("ok a cell's value comes as structured content and as a text item")
    wrote = await session.call_tool("write_file", {"session_id": sid, "path": "a.txt", "content": "hi"})
    assert not wrote.is_error, text_of(wrote)
    read = await session.call_tool("read_file", {"session_id": sid, "path": "a.txt"})
    assert json_of(read)["content"] == "hi", text_of(read)
    listed = await session.call_tool("list_files", {"session_id": sid, "dir": "."})
    assert "a.txt" in text_of(listed), text_of(listed)
    closed = await session.call_tool("close_session", {"session_id": sid})
    assert not closed.is_error, text_of(closed)
    print("ok session round trip kept state and files")


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=["mcp"], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await check(session)
    elif mode == "http":
        url, key = sys.argv[2], sys.argv[3]
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
        async with client:
            async with streamable_http_client(url + "/mcp", http_client=client) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    await check(session)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    asyncio.run(main())
