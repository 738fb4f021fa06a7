"""An MCP server built on the official Python SDK, for the gateway's tests.

Its `lookup` tool's description comes from $PEER_DESCRIPTION, so a test can
change a tool between runs; the other tools misbehave on purpose.
Run: peer_server.py stdio | peer_server.py http PORT [json]
"""

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("arbiter-test-peer")
# The SDK points fd 1 at stderr while it serves; keep the real pipe to
# write garbage on it.
WIRE = os.dup(1)


@server.tool(description=os.environ.get("PEER_DESCRIPTION", "Looks up a word."))
def lookup(word: str) -> str:
    return f"definition of {word}"


@server.tool(name="payments.transfer", description="Moves money.")
def transfer(amount: float, to: str) -> str:
    return f"sent {amount} to {to}"


@server.tool(description="Exits the server while answering.")
def crash() -> str:
    os._exit(3)


@server.tool(description="Writes a line that is not JSON to stdout, then answers.")
def garble() -> str:
    os.write(WIRE, b"this is not json\n")
    return "garbled"


@server.tool(description="Answers with a result of the given size.")
def big(size: int) -> str:
    return "x" * size


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=int(sys.argv[2]),
            json_response=len(sys.argv) > 3 and sys.argv[3] == "json",
        )
