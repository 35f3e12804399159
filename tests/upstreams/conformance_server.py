"""An upstream MCP server that passes the official conformance suite's server scenarios.

`@modelcontextprotocol/conformance` (pinned in tests/upstreams/node/package.json) tests a server
by calling tools, resources and prompts of fixed names (`test_simple_text`,
`test://static-text`, `test_prompt_with_arguments`, ...) and checking what comes back. This is
that server, on the mcp SDK 2.3.0 `MCPServer`, for both protocol eras at once: the handshake era
(sampling, elicitation and logging as server→client requests in the middle of a call,
subscriptions, SSE resumption) and the 2026-07-28 era (stateless requests, `input_required`
multi-round-trip results with a sealed `requestState`, cache hints, `Mcp-Param-*` headers).

tests/conformance/ runs the suite against it directly and through the gateway, so what it
answers is the reference a gateway must not change. Run it alone with
`python -m tests.upstreams.conformance_server --port 3001` (endpoint `/mcp`).

Two choices are about the suite rather than MCP: uvicorn parses with h11, which strips the
optional whitespace around header values as RFC 9110 requires (the suite sends
`Mcp-Name:   test_simple_text  ` and expects it accepted; httptools keeps the spaces), and SSE
events are stored in memory so a client can resume a stream (`Last-Event-ID`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field

# A 1×1 PNG and a tiny WAV: the suite checks type and MIME type, not the pixels.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAF"
    "BQIAX8jx0gAAAABJRU5ErkJggg=="
)
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
# Seals `requestState` (the SDK's AEAD boundary): a tampered state is refused with the spec's
# error. Fixed so every replica of this fixture accepts the others' states.
REQUEST_STATE_KEY = b"mcppool-conformance-fixture-request-state-key!"


class MemoryEvents(EventStore):
    """SSE events kept in memory, so a client that lost a stream can resume it (SEP-1699)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        self.events.append((stream_id, len(self.events) + 1, message))
        return str(len(self.events))

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        after = int(last_event_id) if last_event_id.isdigit() else 0
        if not 0 < after <= len(self.events):
            return None
        stream = self.events[after - 1][0]
        for stream_id, number, message in self.events[after:]:
            if stream_id == stream and message is not None:  # None = a priming event
                await send_callback(EventMessage(message, str(number)))
        return stream


def text(value: str) -> TextContent:
    return TextContent(type="text", text=value)


def image() -> ImageContent:
    return ImageContent(type="image", data=PNG, mime_type="image/png")


def embedded(uri: str, body: str, mime_type: str = "text/plain") -> EmbeddedResource:
    contents = TextResourceContents(uri=uri, mime_type=mime_type, text=body)
    return EmbeddedResource(type="resource", resource=contents)


def ask(message: str, **fields: str) -> ElicitRequest:
    """A form elicitation for the named fields (`name="string"`), all required."""
    schema = {
        "type": "object",
        "properties": {key: {"type": kind} for key, kind in fields.items()},
        "required": list(fields),
    }
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def sample(prompt: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=text(prompt))
    params = CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    return CreateMessageRequest(params=params)


def answered(ctx: Context, key: str) -> Any:
    """The client's answer to input request `key` on this retry, or None."""
    responses = ctx.input_responses or {}
    return responses.get(key)


def form_field(answer: Any, name: str, default: str = "?") -> str:
    if isinstance(answer, ElicitResult) and answer.content:
        return str(answer.content.get(name, default))
    return default


# ---------------------------------------------------------------- elicitation schemas


class Reply(BaseModel):
    response: str = Field(description="User's response")


class Defaults(BaseModel):
    """SEP-1034: a default for every primitive type."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


def _one_of(*options: tuple[str, str]) -> list[Any]:
    return [{"const": value, "title": title} for value, title in options]


class Enums(BaseModel):
    """SEP-1330: every way of writing an enum in an elicitation schema."""

    untitledSingle: str = Field(
        description="Simple enum without titles",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    titledSingle: str = Field(
        description="Enum with titled options (oneOf)",
        json_schema_extra={
            "oneOf": _one_of(("low", "Low Priority"), ("medium", "Medium Priority"),
                             ("high", "High Priority"))
        },
    )  # fmt: skip
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titled options",
        json_schema_extra={
            "items": {"anyOf": _one_of(("feature", "New Feature"), ("bug", "Bug Fix"),
                                       ("docs", "Documentation"))}
        },
    )  # fmt: skip
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    )


# SEP-1613: a tool whose input schema uses JSON Schema 2020-12 keywords that must survive
# `tools/list` unchanged.
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


def passing_tool() -> str:
    """Added and removed again at once, to change a list."""
    return "dynamic"


def json_schema_2020_12_tool() -> str:
    """Tests JSON Schema 2020-12 keyword preservation in tools/list."""
    return "json_schema_2020_12_tool"


# What `build` registers; the decorators below only collect (a fresh server per `build`).
TOOLS: list[tuple[str | None, Callable[..., Any]]] = []
PROMPTS: list[Callable[..., Any]] = []
RESOURCES: list[tuple[str, Callable[..., Any]]] = []
Fn = TypeVar("Fn", bound=Callable[..., Any])


def tool(fn: Fn) -> Fn:
    TOOLS.append((None, fn))
    return fn


def _collect(into: list[tuple[Any, Callable[..., Any]]], key: Any) -> Callable[[Fn], Fn]:
    def register(fn: Fn) -> Fn:
        into.append((key, fn))
        return fn

    return register


def tool_named(name: str) -> Callable[[Fn], Fn]:
    return _collect(TOOLS, name)


def prompt(fn: Fn) -> Fn:
    PROMPTS.append(fn)
    return fn


def resource(uri: str) -> Callable[[Fn], Fn]:
    return _collect(RESOURCES, uri)


# ---------------------------------------------------------------- content tools


@tool
def test_simple_text() -> str:
    """Tests simple text content response"""
    return "This is a simple text response for testing."


@tool
def test_image_content() -> list[ImageContent]:
    """Tests image content response"""
    return [image()]


@tool
def test_audio_content() -> list[AudioContent]:
    """Tests audio content response"""
    return [AudioContent(type="audio", data=WAV, mime_type="audio/wav")]


@tool
def test_embedded_resource() -> list[EmbeddedResource]:
    """Tests embedded resource content response"""
    return [embedded("test://embedded-resource", "This is an embedded resource content.")]


@tool
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Tests response with multiple content types (text, image, resource)"""
    data = embedded(
        "test://mixed-content-resource", '{"test": "data", "value": 123}', "application/json"
    )
    return [text("Multiple content types test:"), image(), data]


@tool
def test_error_handling() -> str:
    """Tests error response handling"""
    raise RuntimeError("This tool intentionally returns an error for testing")


@tool_named("test_x_mcp_header")  # (a `test_` function may have no defaults)
def x_mcp_header(
    region: Annotated[
        str,
        Field(
            description="Mirrored into the Mcp-Param-Region header",
            json_schema_extra={"x-mcp-header": "Region"},
        ),
    ] = "<none>",
) -> str:
    """Tests SEP-2243 Mcp-Param-* headers (validated by the SDK's transport)"""
    return f"region={region}"


@tool
async def test_missing_capability(ctx: Context) -> str:
    """Refuses with a protocol error naming the client capability it needs (sampling)"""
    capabilities = ctx.session.client_capabilities
    if capabilities is None or capabilities.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "Client declared sampling capability; proceeding."


# ---------------------------------------------------------------- session tools
# Tools that talk to the client in the middle of a call (notifications, and in the
# handshake era server→client requests on the call's stream).


@tool
async def test_tool_with_logging(ctx: Context) -> str:
    """Tests tool that emits log messages during execution"""
    for step in ("Tool execution started", "Tool processing data"):
        await ctx.info(step)
        await asyncio.sleep(0.05)
    await ctx.info("Tool execution completed")
    return "Tool with logging executed successfully"


@tool
async def test_tool_with_progress(ctx: Context) -> str:
    """Tests tool that reports progress notifications"""
    for done in (0, 50, 100):
        await ctx.report_progress(done, 100, f"Completed step {done} of 100")
        if done < 100:
            await asyncio.sleep(0.05)
    meta = ctx.request_context.meta if ctx.request_context else None
    return str(meta.get("progress_token") if meta else 0)


@tool
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Tests server-initiated sampling (LLM completion request)"""
    try:
        # On the call's own stream: the standalone GET stream may not be open yet.
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=text(prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
    except Exception as exc:  # the scenario reads the outcome from the text
        return f"Sampling not supported or error: {exc}"
    reply = result.content.text if result.content.type == "text" else "No response"
    return f"LLM response: {reply}"


async def elicit(ctx: Context, message: str, schema: type[BaseModel], label: str) -> str:
    try:
        result = await ctx.elicit(message=message, schema=schema)
    except Exception as exc:
        return f"Elicitation not supported or error: {exc}"
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"{label}: action={result.action}, content={content}"


@tool
async def test_elicitation(message: str, ctx: Context) -> str:
    """Tests server-initiated elicitation (user input request)"""
    return await elicit(ctx, message, Reply, "User response")


@tool
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Tests elicitation with default values for all primitive types (SEP-1034)"""
    message = "Please provide user information"
    return await elicit(ctx, message, Defaults, "Elicitation result")


@tool
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Tests elicitation with enum schema variations per SEP-1330"""
    message = "Please select values using different enum schema types"
    return await elicit(ctx, message, Enums, "Elicitation completed")


@tool
async def test_reconnection(ctx: Context) -> str:
    """Tests SSE polling: closes the stream mid-call, the client resumes it (SEP-1699)"""
    await ctx.info("Before disconnect")
    await ctx.close_sse_stream()
    await asyncio.sleep(0.2)
    await ctx.info("After reconnect")
    return "Reconnection test completed"


# Diagnostic tools of the `server-stateless` scenario (2026-07-28): a request that set no
# log level gets no log notifications; a call's stream carries only notifications and its
# own result, never a request of the server's (input comes back as `input_required`).
@tool
async def test_logging_tool(ctx: Context) -> str:
    """Logs, which reaches only a client that asked for a log level"""
    await ctx.info("test_logging_tool ran")
    return "logged"


@tool
async def test_streaming_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Streams progress, then asks for input the 2026 way"""
    await ctx.report_progress(1, 2, "asking")
    answer = answered(ctx, "name")
    if answer is not None:
        return f"Hello, {form_field(answer, 'name')}!"
    return InputRequiredResult(input_requests={"name": ask("Your name?", name="string")})


# SEP-2575 `subscriptions/listen`: the suite calls these and waits for the list-changed
# notification on its listen stream.
@tool
async def test_trigger_tool_change(ctx: Context) -> str:
    """Changes the tool list and announces it to subscriptions/listen streams"""
    ctx.mcp_server.add_tool(passing_tool, name="test_dynamic_tool")
    ctx.mcp_server.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


@tool
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Changes the prompt list and announces it to subscriptions/listen streams"""
    prompt = Prompt.from_function(passing_tool, name="test_dynamic_prompt", description="x")
    ctx.mcp_server.add_prompt(prompt)
    ctx.mcp_server.remove_prompt("test_dynamic_prompt")
    await ctx.notify_prompts_changed()
    return "prompt list changed"


# ---------------------------------------------------------------- input required tools
# SEP-2322 multi-round-trip requests: answer `input_required` until the retry carries the
# client's answers (and, where used, the `requestState` this server issued).


@tool
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single elicitation request"""
    answer = answered(ctx, "user_name")
    if answer is not None:
        return f"Hello, {form_field(answer, 'name', 'stranger')}!"
    return InputRequiredResult(
        input_requests={"user_name": ask("What is your name?", name="string")}
    )


@tool
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single sampling request"""
    answer = answered(ctx, "capital_question")
    if answer is not None:
        ok = isinstance(answer, CreateMessageResult) and answer.content.type == "text"
        return f"Model said: {answer.content.text if ok else '?'}"
    question = sample("What is the capital of France?", 100)
    return InputRequiredResult(input_requests={"capital_question": question})


@tool
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Tests InputRequiredResult with a single roots/list request"""
    answer = answered(ctx, "client_roots")
    if answer is not None:
        count = len(answer.roots) if isinstance(answer, ListRootsResult) else 0
        return f"Client exposed {count} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


@tool
async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Tests requestState round-tripping in the InputRequiredResult flow"""
    nonce = "request-state-nonce"
    if answered(ctx, "confirm") is not None and ctx.request_state == nonce:
        return "state-ok: confirmation received"
    confirm = _confirm()
    return InputRequiredResult(input_requests={"confirm": confirm}, request_state=nonce)


@tool
async def test_input_required_result_multiple_inputs(
    ctx: Context,
) -> str | InputRequiredResult:
    """Tests InputRequiredResult carrying elicitation, sampling and roots requests together"""
    wanted: dict[str, InputRequest] = {
        "user_name": ask("What is your name?", name="string"),
        "greeting": sample("Generate a greeting", 50),
        "client_roots": ListRootsRequest(),
    }
    if all(answered(ctx, key) is not None for key in wanted):
        return "All inputs received."
    return InputRequiredResult(input_requests=wanted, request_state="multiple-inputs")


@tool
async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Tests a three-round InputRequiredResult flow with evolving requestState"""
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    step1, step2 = answered(ctx, "step1"), answered(ctx, "step2")
    if state["round"] == 1 and step1 is not None:
        name = form_field(step1, "name", "") or None
        color = ask("Step 2: What is your favorite color?", color="string")
        return InputRequiredResult(
            input_requests={"step2": color},
            request_state=json.dumps({"round": 2, "name": name}),
        )
    if state["round"] == 2 and step2 is not None:
        return f"{state.get('name')} likes {form_field(step2, 'color', '') or None}."
    # First round, or an answer missing: (re)start with step 1.
    return InputRequiredResult(
        input_requests={"step1": ask("Step 1: What is your name?", name="string")},
        request_state=json.dumps({"round": 1}),
    )


@tool
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """Tests that a tampered requestState is refused (by the SDK's sealing boundary)"""
    if ctx.request_state is None:
        return InputRequiredResult(input_requests={"confirm": _confirm()}, request_state="round-1")
    return f"state-ok: {ctx.request_state}"


@tool
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Tests that inputRequests only include methods the client declared support for"""
    caps = ctx.client_capabilities
    requests: dict[str, InputRequest] = {}
    if caps is None or caps.sampling is not None:
        requests["sample"] = sample("Say hello", 50)
    if caps is None or caps.elicitation is not None:
        requests["ask"] = ask("What is your name?", name="string")
    return InputRequiredResult(input_requests=requests, request_state="capability-gated")


@prompt
async def test_input_required_result_prompt(
    ctx: Context,
) -> list[UserMessage] | InputRequiredResult:
    """Tests InputRequiredResult from prompts/get (SEP-2322 non-tool request)"""
    answer = answered(ctx, "user_context")
    if answer is not None:
        use = f"Use the following context: {form_field(answer, 'context')}"
        return [UserMessage(role="user", content=text(use))]
    question = ask("What context should the prompt use?", context="string")
    return InputRequiredResult(input_requests={"user_context": question})


def _confirm() -> ElicitRequest:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    return ElicitRequest(
        params=ElicitRequestFormParams(message="Please confirm", requested_schema=schema)
    )


# ---------------------------------------------------------------- resources and prompts


@resource("test://static-text")
def static_text_resource() -> str:
    """A static text resource for testing"""
    return "This is the content of the static text resource."


@resource("test://static-binary")
def static_binary_resource() -> bytes:
    """A static binary resource (image) for testing"""
    return base64.b64decode(PNG)


@resource("test://template/{id}/data")
def template_resource(id: str) -> str:
    """A resource template with parameter substitution"""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@resource("test://watched-resource")
def watched_resource() -> str:
    """A resource that can be subscribed to for updates"""
    return "Watched resource content"


@prompt
def test_simple_prompt() -> list[UserMessage]:
    """A simple prompt without arguments"""
    return [UserMessage(role="user", content=text("This is a simple prompt for testing."))]


@prompt
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with required arguments"""
    said = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
    return [UserMessage(role="user", content=text(said))]


@prompt
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """A prompt that includes an embedded resource"""
    resource = embedded(resourceUri, "Embedded resource content for testing.")
    return [
        UserMessage(role="user", content=resource),
        UserMessage(role="user", content=text("Please process the embedded resource above.")),
    ]


@prompt
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt that includes image content"""
    return [
        UserMessage(role="user", content=image()),
        UserMessage(role="user", content=text("Please analyze the image above.")),
    ]


async def complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion:
    """Completion is supported; this fixture has nothing to suggest."""
    return Completion(values=[], total=0, has_more=False)


def build() -> MCPServer[Any]:
    """The server, every tool, resource and prompt the scenarios use registered."""
    schema_tool = Tool.from_function(json_schema_2020_12_tool).model_copy(
        update={"parameters": SCHEMA_2020_12}
    )
    server: MCPServer[Any] = MCPServer(
        name="mcppool-conformance-fixture",
        version="1.0.0",
        tools=[schema_tool],
        request_state_security=RequestStateSecurity(keys=[REQUEST_STATE_KEY]),
    )
    for name, fn in TOOLS:
        server.add_tool(fn, name=name)
    for fn in PROMPTS:
        server.add_prompt(Prompt.from_function(fn))
    for uri, fn in RESOURCES:
        server.resource(uri)(fn)
    server.completion()(complete)  # type: ignore[no-untyped-call]
    _handshake_era_handlers(server)
    return server


def _handshake_era_handlers(server: MCPServer[Any]) -> None:
    """`logging/setLevel` and resource subscriptions: handshake-era methods `MCPServer` has no
    decorator for, so they go on its low-level server."""
    subscribed: set[str] = set()

    async def set_level(
        ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
    ) -> EmptyResult:
        return EmptyResult()

    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        subscribed.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        subscribed.discard(str(params.uri))
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args()
    app = build().streamable_http_app(event_store=MemoryEvents(), retry_interval=100)
    uvicorn.run(app, host="127.0.0.1", port=args.port, http="h11", log_level="warning")


if __name__ == "__main__":
    main()
