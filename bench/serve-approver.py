# The automated approver of bench/serve.sh: follows the tenant's event stream
# (GET /v1/events) as a user with the approver role and approves every held request
# as soon as its `approval_requested` event arrives (POST /v1/approvals/ID/approve).
# Prints one JSON line per approval: the seconds from the event's time to its arrival
# here and to the approve call's answer. Runs until it is stopped.
#
# Usage: AGENTSPACE_TOKEN=... python3 serve-approver.py URL
import calendar, http.client, json, os, sys, time
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
token = os.environ["AGENTSPACE_TOKEN"]
auth = {"Authorization": "Bearer " + token}


def event_time(text):
    # 2026-01-02T03:04:05.123456789Z -> Unix seconds
    whole, frac = text.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)


def approve(approval):
    c = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    c.request("POST", "/v1/approvals/%s/approve" % approval,
              body=json.dumps({"comment": "bench approver"}),
              headers=dict(auth, **{"Content-Type": "application/json"}))
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


last_id = None
while True:
    # A stream ends after a while (the server re-authenticates on reconnect); resume
    # after the last event seen.
    stream = http.client.HTTPConnection(url.hostname, url.port)
    headers = dict(auth, Accept="text/event-stream")
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    stream.request("GET", "/v1/events", headers=headers)
    answer = stream.getresponse()
    assert answer.status == 200, answer.status
    # An event's fields (id, event, data) may come in any order; it ends at a blank line.
    kind, data = None, []
    for line in answer:
        line = line.decode().rstrip("\r\n")
        if line.startswith("id:"):
            last_id = line[3:].strip()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:])
        elif line == "":
            if kind == "approval_requested" and data:
                seen = time.time()
                event = json.loads("\n".join(data))["event"]
                approval = event["details"]["approval"]
                status = approve(approval)
                done = time.time()
                held_at = event_time(event["time"])
                print(json.dumps({"approval": approval, "status": status,
                                  "event_to_seen": seen - held_at,
                                  "event_to_decided": done - held_at}), flush=True)
            kind, data = None, []
