#!/usr/bin/env python3
"""Sends N signed issue_comment deliveries to a berth daemon over C keep-alive
connections, each a `/berth review` of its own pull request, numbered from
FIRST (so each queues a task), made as the webhook bench makes them; prints
the answers counted by status and outcome. For intake-instructions.sh.

usage: intake-deliveries.py ADDR N C FIRST"""
import hashlib
import hmac
import http.client
import json
import os
import sys
import threading
import time
import uuid

SECRET = b"bench-webhook-secret"
SENTINEL = 987654321
FIXTURE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "github-webhooks", "payloads",
    "issue_comment", "created.go-playground.on-pr-slash-command.json")

addr, count, connections, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
with open(FIXTURE) as fixture:
    payload = json.load(fixture)
payload["comment"]["body"] = "/berth review"
payload["comment"]["author_association"] = "OWNER"
payload["installation"] = {"id": 1, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="}
payload["issue"]["number"] = SENTINEL
payload["comment"]["id"] = SENTINEL
parts = json.dumps(payload, separators=(",", ":")).split(str(SENTINEL))
assert len(parts) == 3, "the number appears twice (issue and comment)"

deliveries = []
for index in range(count):
    body = str(first + index).join(parts).encode()
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    deliveries.append((body, signature, str(uuid.uuid4())))

answers = {}
lock = threading.Lock()


def send(offset):
    connection = http.client.HTTPConnection(host, int(port))
    for body, signature, delivery in deliveries[offset::connections]:
        connection.request("POST", "/webhook", body=body, headers={
            "content-type": "application/json",
            "user-agent": "GitHub-Hookshot/intake-deliveries",
            "x-github-event": "issue_comment",
            "x-github-delivery": delivery,
            "x-hub-signature-256": signature,
        })
        response = connection.getresponse()
        text = response.read()
        outcome = json.loads(text).get("outcome") if response.status == 202 else text[:80]
        with lock:
            answers[(response.status, outcome)] = answers.get((response.status, outcome), 0) + 1


started = time.time()
threads = [threading.Thread(target=send, args=(offset,)) for offset in range(connections)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(f"answers {answers} in {time.time() - started:.1f} s")
sys.exit(0 if answers == {(202, "queued"): count} else 1)
