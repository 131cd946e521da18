"""The loop an e-mail or SMS dispatcher runs against consentd, in Python.

Before a send, one CanSendBatch for the whole send list, with a deadline;
each allowed message gets its unsubscribe link in the List-Unsubscribe and
List-Unsubscribe-Post headers (RFC 8058 one-click). The dispatcher's own
writes (a complaint it turns into a withdrawal) come first, and the batch
carries the largest sequence they answered as `min_sequence`, so whichever
node answers has applied them. UNAVAILABLE and RESOURCE_EXHAUSTED are
retried with exponential backoff and jitter inside the deadline; when no
answer comes, nothing is sent (fail closed).

    python -m grpc_tools.protoc -I ../../../proto --python_out=gen \\
        --grpc_python_out=gen consent/v1/consent.proto
    PYTHONPATH=gen python dispatch.py --target 127.0.0.1:50051 \\
        --send-list send-list.json --withdraw carol@example.com=marketing

Prints one JSON line per recipient:
{"contact_id": ..., "channel": ..., "brand": ..., "send": true|false,
 "reason": "REASON_GRANTED" | ... | "NO_ANSWER", "headers": {...}}
"""

import argparse
import json
import random
import sys
import time

import grpc

from consent.v1 import consent_pb2 as pb
from consent.v1 import consent_pb2_grpc as rpc

# Worth another try: the server is overloaded or not reachable right now.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def with_retries(call, deadline, log):
    """Runs call(timeout) until it answers, a non-retryable error, or the
    deadline (time.monotonic()) passes; None when no answer came."""
    backoff = 0.05
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        if left <= 0:
            log(f"no answer before the deadline after {attempt - 1} attempts")
            return None
        try:
            return call(left)
        except grpc.RpcError as e:
            if e.code() not in RETRYABLE and e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            log(f"attempt {attempt}: {e.code().name}: {e.details()}")
        # Full jitter: sleep a random share of the backoff, never past
        # the deadline; the backoff doubles up to one second.
        pause = min(random.uniform(0, backoff), max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
        backoff = min(backoff * 2, 1.0)


def list_headers(result):
    """RFC 2369 and RFC 8058: the link, and that a POST to it unsubscribes;
    RFC 2919: the list the message belongs to (stable per deciding consent
    and brand, so mailbox providers can tell one list from another)."""
    return {
        "List-Id": f"<{result.list_id}>",
        "List-Unsubscribe": f"<{result.unsubscribe_url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def dispatch(channel, send_list, withdrawals, deadline_s, metadata, log):
    consents = rpc.ConsentsServiceStub(channel)
    eligibility = rpc.EligibilityServiceStub(channel)
    deadline = time.monotonic() + deadline_s

    # The dispatcher's own writes first (here: complaints it received).
    newest = 0
    for contact, consent in withdrawals:
        request = pb.WithdrawRequest(
            contact_id=contact,
            consent_id=consent,
            source=pb.SOURCE_API,
            evidence={"reason": "complaint"},
            # Retried with the same key, a withdrawal is recorded once.
            idempotency_key=f"complaint:{contact}:{consent}",
        )
        answer = with_retries(
            lambda t: consents.Withdraw(request, timeout=t, metadata=metadata),
            deadline,
            log,
        )
        if answer is None:
            # Not acknowledged: send nothing to that person in this run.
            log(f"withdrawal of {contact} not acknowledged")
            send_list = [r for r in send_list if r["contact_id"] != contact]
            continue
        newest = max(newest, answer.sequence)

    batch = pb.CanSendBatchRequest(
        checks=[
            pb.CanSendRequest(
                contact_id=r["contact_id"],
                channel=r["channel"],
                brand=r["brand"],
                purpose=r.get("purpose", ""),
                include_unsubscribe=True,
            )
            for r in send_list
        ],
        # Read your own writes, on whichever node answers.
        min_sequence=newest,
    )
    answer = with_retries(
        lambda t: eligibility.CanSendBatch(batch, timeout=t, metadata=metadata),
        deadline,
        log,
    )
    decisions = []
    for i, r in enumerate(send_list):
        if answer is None:
            # Fail closed: no answer is never a yes.
            decisions.append(dict(r, send=False, reason="NO_ANSWER", headers={}))
            continue
        result = answer.results[i]
        headers = list_headers(result) if result.allowed else {}
        decisions.append(
            dict(
                r,
                send=result.allowed,
                reason=pb.Reason.Name(result.reason),
                decided_by=result.decided_by,
                error=result.error,
                headers=headers,
            )
        )
    return decisions


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="host:port of consentd's gRPC listener")
    p.add_argument("--send-list", required=True, help="JSON: [{contact_id, channel, brand}]")
    p.add_argument("--withdraw", action="append", default=[], metavar="CONTACT=CONSENT")
    p.add_argument("--deadline-ms", type=int, default=2000)
    p.add_argument("--token", help="bearer token (role check, and write for --withdraw)")
    a = p.parse_args()

    with open(a.send_list) as f:
        send_list = json.load(f)
    withdrawals = [tuple(w.split("=", 1)) for w in a.withdraw]
    metadata = [("authorization", f"Bearer {a.token}")] if a.token else None
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with grpc.insecure_channel(a.target) as channel:
        for d in dispatch(channel, send_list, withdrawals, a.deadline_ms / 1000, metadata, log):
            print(json.dumps(d), flush=True)


if __name__ == "__main__":
    main()
