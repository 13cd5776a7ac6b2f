"""FlexFactor's order endpoints in the sandbox: get one, list (filtered, sorted, paged) and cancel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from recycle_engine.sandbox.records import LoggedRequest, Order
from recycle_engine.sandbox.replies import (
    _canonical_hash,
    _json,
    _lower_keys,
    _read_object,
    _replay_or_conflict,
    field_errors,
)
from recycle_engine.sandbox.scenarios import STATUS_NAMES, parse_time
from recycle_engine.sandbox.state import SandboxState
from recycle_engine.sandbox.vendor import Deferred

__all__ = ["cancel", "external_cancel", "get_order", "list_orders"]


async def get_order(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    order = state.find_order(request.path_params["id"])
    if order is None:
        return _json(404, {"status": 404, "title": "Not Found", "detail": "Unknown order id."})
    return Deferred(lambda: _json(200, order.as_vendor()))


async def list_orders(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    query = request.query_params
    errors: dict[str, list[str]] = {}
    bounds = {}
    for name in ("from", "to"):
        raw = query.get(name)
        bounds[name] = parse_time(raw) if raw else None
        if raw and bounds[name] is None:
            errors[name.capitalize()] = [f"The value '{raw}' is not a valid date."]
    numbers: dict[str, int] = {}
    for name, default, low in (("pageSize", 10, 1), ("pageNumber", 1, 1)):
        raw = query.get(name, str(default))
        numbers[name] = int(raw) if raw.isdigit() else 0
        if numbers[name] < low:
            errors[name[0].upper() + name[1:]] = [f"The value '{raw}' is not valid for {name}."]
    raw_statuses = query.getlist("status")
    if any(not s.isdigit() or int(s) not in STATUS_NAMES for s in raw_statuses):
        errors["Status"] = ["Each status must be an order status code from 0 to 7."]
    sort = query.get("sort", "desc").lower()
    if sort not in ("asc", "desc"):
        errors["Sort"] = ["The sort must be asc or desc."]
    if errors:
        return field_errors(state, 400, errors)
    statuses = {int(s) for s in raw_statuses}
    mid, exact = (query.get("mid") or "").lower(), query.get("query")
    order_by = (query.get("orderBy") or "createdOn").lower()

    def matches(o: Order) -> bool:
        return (
            (not mid or o.mid.lower() == mid)
            and (bounds["from"] is None or o.placed_at >= bounds["from"])
            and (bounds["to"] is None or o.placed_at <= bounds["to"])
            and (not statuses or o.status in statuses)
            and (exact is None or o.external_order_id == exact)
        )

    def commit() -> Response:
        items = [o for o in state.all_orders() if matches(o)]
        items.sort(key=lambda o: _sort_key(o, order_by), reverse=sort == "desc")
        size, number, total = numbers["pageSize"], numbers["pageNumber"], len(items)
        pages = -(-total // size)
        return _json(
            200,
            {
                "pageNumber": number,
                "pageSize": size,
                "pageCount": pages,
                "totalItemCount": total,
                "hasNextPage": number < pages,
                "isLastPage": number >= pages,
                "items": [o.as_vendor() for o in items[(number - 1) * size : number * size]],
                "statusNames": {str(code): name for code, name in STATUS_NAMES.items()},
            },
        )

    return Deferred(commit)


def _sort_key(order: Order, order_by: str) -> Any:
    if order_by == "amount":
        return order.amount
    if order_by == "status":
        return order.status
    if order_by == "expirydate":
        return order.expiry_at or datetime.min.replace(tzinfo=UTC)
    return order.placed_at


async def cancel(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    return await _cancel(request, state, state.find_order(request.path_params["id"]))


async def external_cancel(request: Request, state: SandboxState, entry: LoggedRequest) -> Response | Deferred:
    entry.order_id = request.path_params["order_id"]
    return await _cancel(request, state, state.find_by_external(entry.order_id))


async def _cancel(request: Request, state: SandboxState, order: Order | None) -> Response | Deferred:
    raw = await request.body()
    body = await _read_object(request) if raw.strip() else {}
    if body is None:
        return field_errors(state, 400, {"$": ["The request body must be a JSON object."]})
    if order is None:
        return _json(404, {"status": 404, "title": "Not Found", "detail": "Unknown order."})
    key = str(_lower_keys(body).get("idempotencykey") or "")
    keys, record = state.store.cancel_keys, None
    if key:
        body_hash = _canonical_hash([request.url.path, body])
        record, is_new = state.claim_key(keys, key, body_hash)
        if not is_new:
            return _replay_or_conflict(state, record, body_hash)

    def commit() -> Response:
        if state.cancel_order(order):
            response = _json(200, {}, background=BackgroundTask(state.deliver_pending))
        else:
            response = field_errors(
                state, 400, {"OrderId": [f"An order in status {order.status_name} cannot be cancelled."]}
            )
        if record is not None:
            record.status, record.body = response.status_code, bytes(response.body)
        return response

    def abort() -> None:
        if record is not None:
            state.release_key(keys, key, record)

    return Deferred(commit, abort)
