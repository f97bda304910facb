"""Registers one symmetric-key device with dpsd over AMQP 1.0, using Apache
Qpid Proton's Python binding (Debian's python3-qpid-proton) as an AMQP
implementation independent of dpsd's and of the Azure SDKs'.

It speaks the DPS exchange as the Azure SDKs do: SASL PLAIN with the user
{idScope}/registrations/{registrationId} and a SAS token as password, a
receiver and a sender link on that address with com.microsoft:api-version,
a register request, then polls until the status is terminal. It prints one
line "RESULT <json>" with the final answer, or "REJECTED <description>" when
the service refuses the request, and exits 0 in both cases; anything else
exits non-zero.

Usage: proton_register.py HOST PORT CA_FILE ID_SCOPE REGISTRATION_ID KEY
"""

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.parse
import uuid

from proton import Message, SSLDomain, symbol
from proton.reactor import LinkOption
from proton.utils import BlockingConnection, SendException

TIMEOUT = 30
MAX_POLLS = 20


def sas_token(scope, reg_id, key, ttl=600):
    sr = urllib.parse.quote(f"{scope}/registrations/{reg_id}", safe="")
    se = str(int(time.time()) + ttl)
    mac = hmac.new(base64.b64decode(key), f"{sr}\n{se}".encode(), hashlib.sha256)
    sig = urllib.parse.quote(base64.b64encode(mac.digest()).decode(), safe="")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=registration"


class LinkProperties(LinkOption):
    def __init__(self, props):
        self.props = props

    def apply(self, link):
        link.properties = self.props


def request(sender, receiver, op, body, op_id=None):
    msg = Message(body=body, inferred=True)
    msg.correlation_id = str(uuid.uuid4())
    msg.properties = {"iotdps-operation-type": op}
    if op_id:
        msg.properties["iotdps-operation-id"] = op_id
    sender.send(msg, timeout=TIMEOUT)
    # dpsd sends its answers pre-settled (the link's sender settle mode is
    # mixed), so there is nothing to accept.
    answer = receiver.receive(timeout=TIMEOUT)
    if answer.correlation_id != msg.correlation_id:
        raise SystemExit(f"answer correlation id {answer.correlation_id!r}, want {msg.correlation_id!r}")
    data = answer.body
    if isinstance(data, memoryview):
        data = data.tobytes()
    return json.loads(data), (answer.properties or {})


def main():
    host, port, ca, scope, reg_id, key = sys.argv[1:7]
    ssl = SSLDomain(SSLDomain.MODE_CLIENT)
    ssl.set_trusted_ca_db(ca)
    ssl.set_peer_authentication(SSLDomain.VERIFY_PEER)
    user = f"{scope}/registrations/{reg_id}"
    conn = BlockingConnection(
        f"amqps://{host}:{port}", ssl_domain=ssl, timeout=TIMEOUT,
        sasl_enabled=True, allowed_mechs="PLAIN", user=user,
        password=sas_token(scope, reg_id, key))
    try:
        props = LinkProperties({symbol("com.microsoft:api-version"): "2019-03-31"})
        receiver = conn.create_receiver(user, name="recv", options=props)
        sender = conn.create_sender(user, name="send", options=props)
        body = json.dumps({"registrationId": reg_id}).encode()
        try:
            answer, aprops = request(sender, receiver, "iotdps-register", body)
            for _ in range(MAX_POLLS):
                if answer.get("status") != "assigning":
                    break
                time.sleep(float(aprops.get("retry-after", "1")))
                answer, aprops = request(sender, receiver, "iotdps-get-operationstatus", b"", answer["operationId"])
        except SendException as e:
            print("REJECTED", e, flush=True)
            return
        print("RESULT", json.dumps(answer), flush=True)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
