"""ComfyUI's failures, turned into one error type whose message says what failed and what to do.

ComfyUI reports a refused workflow as `error` + `node_errors` in the answer to `POST /prompt`, and a failed or
interrupted run as `execution_error` / `execution_interrupted` messages in the prompt's `/history` entry (see
https://docs.comfy.org/development/comfyui-server/comms_routes and
https://docs.comfy.org/development/comfyui-server/comms_messages). This module reads both shapes.
"""

from __future__ import annotations

import json
from typing import Any

from influencer_pipeline.redaction import excerpt


class ComfyUIError(RuntimeError):
    """Anything that went wrong talking to ComfyUI; the message names what failed and what to do."""


def describe_rejection(where: str, payload: dict[str, Any]) -> str:
    """One message for a 400 (or a 200 with `node_errors`): which node class, which input, why, and the fix."""
    error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
    node_errors = payload.get("node_errors") if isinstance(payload.get("node_errors"), dict) else {}
    problems = []
    inputs = set()
    for node_id, entry in node_errors.items():
        for item in entry.get("errors", []):
            input_name = (item.get("extra_info") or {}).get("input_name")
            inputs.add(input_name)
            problems.append(
                f"node {node_id} ({entry.get('class_type')}) input {input_name!r}: "
                f"{item.get('message')}: {item.get('details')}"
            )
    kind = error.get("type", "node_errors")
    stated = ": ".join(str(error[key]) for key in ("message", "details") if error.get(key))
    summary = "; ".join(problems) or stated or excerpt(json.dumps(payload), 300)
    if "lora_name" in inputs:
        fix = "the LoRA is not in ComfyUI's loras folder: deploy it with deploy_lora and check the shared folder path"
    elif "ckpt_name" in inputs:
        fix = "put the checkpoint in ComfyUI's models/checkpoints or configure one that ComfyUI lists"
    elif kind in ("invalid_prompt", "missing_node_type"):
        fix = (
            "the workflow uses a node this ComfyUI does not have: install that custom node or use a core-node template"
        )
    else:
        fix = "correct the named input in the request or the workflow template"
    return f"ComfyUI rejected the workflow for {where} ({kind}): {summary}. Fix: {fix}"


def describe_execution_error(where: str, prompt_id: str, data: dict[str, Any]) -> str:
    """One message for an `execution_error`: the failing node, ComfyUI's exception, and the fix (smaller images
    for an out-of-memory error, the ComfyUI console's traceback for anything else)."""
    exception_type = str(data.get("exception_type", "error"))
    if "OutOfMemory" in exception_type:
        fix = "lower width/height or use fewer LoRAs, or free the GPU (ComfyUI POST /free) and retry"
    else:
        fix = "see the traceback in the ComfyUI console; check that node's inputs and model files"
    return (
        f"ComfyUI failed on {where} (prompt {prompt_id}) in node {data.get('node_id')} ({data.get('node_type')}): "
        f"{exception_type}: {str(data.get('exception_message', '')).strip()}. Fix: {fix}"
    )


def history_failure(where: str, prompt_id: str, entry: dict[str, Any]) -> ComfyUIError | None:
    """The error a finished prompt's `/history` entry ended with, or None when it succeeded: an execution error
    first, then an interruption, then a bare `status_str: error`."""
    status = entry.get("status") or {}
    messages = [m for m in status.get("messages") or [] if isinstance(m, list) and len(m) == 2]
    for kind, data in messages:
        if kind == "execution_error":
            return ComfyUIError(describe_execution_error(where, prompt_id, data))
    for kind, data in messages:
        if kind == "execution_interrupted":
            return ComfyUIError(
                f"ComfyUI interrupted {where} (prompt {prompt_id}) at node {data.get('node_id')} "
                f"({data.get('node_type')}): someone cancelled it in ComfyUI or called /interrupt. "
                "Run the step again"
            )
    if status.get("status_str") == "error":
        return ComfyUIError(
            f"ComfyUI reports {where} (prompt {prompt_id}) as failed without an error message. "
            "Check the ComfyUI console"
        )
    return None
