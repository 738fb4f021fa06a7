"""An MCP client on the official Python SDK, driven by the gateway's tests.

Reads a script (JSON) from stdin: {"transport": "stdio", "command": [...],
"env": {...}} or {"transport": "http", "url": ..., "headers": {...}}, and
"steps": a list of
  {"op": "list"}
  {"op": "call", "tool": NAME, "args": {...}, "meta": {...}, "progress": bool}
  {"op": "http", "method": M, "url": U, "body": {...}, "headers": {...}}
  {"op": "run", "argv": [...], "env": {...}}
  {"op": "sleep", "s": SECONDS}
where "{approval}" anywhere in a step stands for the id of the approval
in the last error that carried one; and prints one JSON line per step: {"tools": [...]}, {"result": {...}},
{"error": {"code", "message", "data"}}, {"status", "body"}, {"code", "stdout", "stderr"}. Server-to-client
traffic it saw is printed at the end: {"notifications": [...],
"sampling": N}.
"""

import json
import os
import sys
import urllib.request

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

seen = {"notifications": [], "sampling": 0}


def out(value):
    print(json.dumps(value), flush=True)


async def on_message(message):
    if isinstance(message, Exception):
        seen["notifications"].append({"exception": str(message)})
        return
    root = getattr(message, "root", message)
    method = getattr(root, "method", None)
    if method:
        seen["notifications"].append(method)


async def on_log(params):
    seen["notifications"].append("log:" + str(params.data)[:200])


async def on_sampling(context, params):
    seen["sampling"] += 1
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="sampled by the test client"),
        model="test-model",
    )


def http_step(step):
    data = json.dumps(step.get("body")).encode() if "body" in step else None
    req = urllib.request.Request(step["url"], data=data, method=step.get("method", "GET"))
    for k, v in step.get("headers", {}).items():
        req.add_header(k, v)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return {"status": r.status, "body": json.loads(r.read() or b"null")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": json.loads(e.read() or b"null")}


async def run(streams, steps):
    read, write = streams[0], streams[1]
    async with ClientSession(
        read,
        write,
        message_handler=on_message,
        logging_callback=on_log,
        sampling_callback=on_sampling,
        read_timeout_seconds=60,
    ) as s:
        await s.initialize()
        approval = ""
        for step in steps:
            step = json.loads(json.dumps(step).replace("{approval}", approval))
            op = step["op"]
            try:
                if op == "list":
                    tools = await s.list_tools()
                    out({"tools": [t.model_dump(by_alias=True, exclude_none=True) for t in tools.tools]})
                elif op == "call":
                    progress = []

                    async def on_progress(p, total, message):
                        progress.append(p)

                    kwargs = {}
                    if step.get("meta"):
                        kwargs["meta"] = step["meta"]
                    if step.get("progress"):
                        kwargs["progress_callback"] = on_progress
                    r = await s.call_tool(step["tool"], step.get("args", {}), **kwargs)
                    out({"result": r.model_dump(by_alias=True, exclude_none=True), "progress": progress})
                elif op == "http":
                    out(await anyio.to_thread.run_sync(http_step, step))
                elif op == "run":
                    import subprocess

                    p = await anyio.to_thread.run_sync(
                        lambda: subprocess.run(
                            step["argv"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **step.get("env", {})},
                        )
                    )
                    out({"code": p.returncode, "stdout": p.stdout, "stderr": p.stderr})
                elif op == "sleep":
                    await anyio.sleep(step["s"])
            except MCPError as e:
                if isinstance(e.data, dict) and isinstance(e.data.get("approval"), dict):
                    approval = e.data["approval"]["id"]
                out({"error": {"code": e.code, "message": e.message, "data": e.data}})
    out(seen)


async def main():
    script = json.load(sys.stdin)
    if script["transport"] == "stdio":
        params = StdioServerParameters(
            command=script["command"][0],
            args=script["command"][1:],
            env={**os.environ, **script.get("env", {})},
        )
        async with stdio_client(params) as streams:
            await run(streams, script["steps"])
    else:
        from mcp.shared._httpx_utils import create_mcp_http_client

        async with create_mcp_http_client(headers=script.get("headers", {})) as http:
            async with streamable_http_client(script["url"], http_client=http) as streams:
                await run(streams, script["steps"])


anyio.run(main)
