"""A tool-using agent on the official OpenAI Python SDK, against llm-proxy.

Usage: sdk_client.py BASE_URL API_KEY. Prints one JSON line per step; between
the first turn and the second it prints {"step": "waiting"} and reads one line
from stdin, so the test can take the primary down mid-conversation.
"""

import json
import sys

from openai import OpenAI

base_url, api_key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)

tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}]
messages = [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": [
        {"type": "text", "text": "What's the weather in Paris?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]},
]


def say(**fields):
    print(json.dumps(fields), flush=True)


# Turn 1: the model calls the tool.
raw = client.chat.completions.with_raw_response.create(model="smart", messages=messages, tools=tools)
first = raw.parse()
call = first.choices[0].message.tool_calls[0]
say(step="tool_call", tier=raw.headers.get("x-llm-proxy-tier"),
    finish_reason=first.choices[0].finish_reason, id=call.id,
    name=call.function.name, arguments=json.loads(call.function.arguments))

# The agent runs the tool and sends the result back, once the test says so.
say(step="waiting")
sys.stdin.readline()
messages.append(first.choices[0].message.model_dump(exclude_none=True))
messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21})})
raw = client.chat.completions.with_raw_response.create(model="smart", messages=messages, tools=tools)
final = raw.parse()
say(step="final", tier=raw.headers.get("x-llm-proxy-tier"),
    degraded=raw.headers.get("x-llm-proxy-degraded"),
    finish_reason=final.choices[0].finish_reason, content=final.choices[0].message.content)

# A new conversation, streamed: the SDK assembles the tool call's fragments.
stream = client.chat.completions.create(model="smart", messages=messages[:2], tools=tools,
                                        stream=True)
calls = {}
finish = None
for chunk in stream:
    if not chunk.choices:
        continue
    choice = chunk.choices[0]
    for fragment in choice.delta.tool_calls or []:
        entry = calls.setdefault(fragment.index, {"id": None, "name": None, "arguments": ""})
        if fragment.id:
            entry["id"] = fragment.id
        if fragment.function and fragment.function.name:
            entry["name"] = fragment.function.name
        if fragment.function and fragment.function.arguments:
            entry["arguments"] += fragment.function.arguments
    finish = choice.finish_reason or finish
streamed = calls[0]
say(step="streamed", finish_reason=finish, id=streamed["id"], name=streamed["name"],
    arguments=json.loads(streamed["arguments"]))
