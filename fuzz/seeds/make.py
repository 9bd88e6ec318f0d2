#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target (fuzz/corpus/<target>/): contract-shaped JSON
records as an outside client writes them, each behind the control byte of tillbridge_fuzz::record
(content-type application/json, a record timestamp on the day of the events, the topic)."""
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "corpus")

def control(topic=0, content_type=1, ts=1):
    return bytes([content_type | (ts << 2) | (topic << 4)])

def ev(n, body, **kw):
    e = {"eventId": f"0b6f2a59-3f8e-4f54-8a57-7b2f0f7c{n:04x}", "storeId": "S012", "tillId": "T3",
         "tillSeq": str(n), "occurredAt": "2026-11-02T10:15:00Z", "offline": n % 2 == 0,
         "sessionId": f"R-S012-T3-{n:06d}", "profileId": "P-100200", "currency": "EUR"}
    e.update(kw)
    e.update(body)
    return json.dumps(e).encode()

sale = {"sale": {"lines": [{"sku": "SKU-0042", "quantity": 2, "unitPriceMinor": "1299", "discountMinor": "0"}],
                 "coupons": [{"code": "SPRING-5OFF", "discountMinor": "500", "campaignId": "spring"}],
                 "loyalty": {"programId": "club", "pointsEarned": "20", "pointsRedeemed": "40"},
                 "totalMinor": "2098"}}
events = [
    ev(1, sale, cashierId="C-77", channel="IN_STORE"),
    ev(2, {"return": {"originalSessionId": "R-S012-T3-000001",
                      "lines": [{"sku": "SKU-0042", "quantity": 2, "refundMinor": "2098"}], "refundMinor": "2098"}}),
    ev(3, {"sessionCancelled": {"reason": "customer changed mind"}}),
    ev(4, {"manualOverride": {"kind": "PRICE_OVERRIDE", "amountMinor": "300", "reason": "damaged", "approvedBy": "M-1"}}),
    ev(5, {"tillStatus": {"status": "ONLINE", "lastSyncedSeq": "4"}}),
    json.dumps({"event_id": "6c0d4c8e-8a2e-4c51-9b3e-2f0b8b7a9d01", "store_id": "S012", "till_id": "T3",
                "till_seq": 4813, "occurred_at": "2026-11-02T10:21:00+01:00", "session_id": "R-S012-T3-004812",
                "currency": "EUR", "session_cancelled": {"reason": "customer changed mind"}}).encode(),
]
fact = {"id": "9a1f3c0e-1d2b-5c3d-8e4f-0a1b2c3d4e5f", "kind": "REDEEMED", "eventId": "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c0001",
        "code": "SPRING-5OFF", "campaignId": "spring", "sessionId": "R-S012-T3-000001", "storeId": "S012",
        "tillId": "T3", "tillSeq": "1", "profileId": "P-100200", "offline": True,
        "occurredAt": "2026-11-02T10:15:00Z", "discountMinor": "500", "currency": "EUR", "index": 0}
loyalty = {"id": "9a1f3c0e-1d2b-5c3d-8e4f-0a1b2c3d4e60", "kind": "REDEEMED_POINTS", "eventId": "0b6f2a59-3f8e-4f54-8a57-7b2f0f7c0001",
           "profileId": "P-100200", "programId": "club", "sessionId": "R-S012-T3-000001", "storeId": "S012",
           "tillId": "T3", "tillSeq": "1", "offline": True, "occurredAt": "2026-11-02T10:15:00Z", "points": "40",
           "saleTotalMinor": "2098", "currency": "EUR"}
coupon = {"code": "SPRING-5OFF", "campaignId": "spring", "usageLimit": 1, "perProfileLimit": 1,
          "validFrom": "2026-11-01T00:00:00Z", "validUntil": "2026-12-01T00:00:00Z", "offlineAllowed": False}
balance = {"profileId": "P-100200", "programId": "club", "balance": "30", "asOf": "2026-11-02T09:00:00Z"}
store = {"storeId": "S012", "region": "north", "channelType": "mall", "isLive": True, "openingDate": "2021-03-01"}

corpus = {
    "ingest": [control() + e for e in events],
    "fraud_guard": [control() + e for e in events],
    "reconciler": [control(0) + json.dumps(fact).encode(), control(1) + json.dumps(loyalty).encode(),
                   control(2) + json.dumps(coupon).encode(), control(3) + json.dumps(balance).encode()],
    "store_table": [control() + json.dumps(store).encode()],
    "pan": [b"Receipt 123 4111 1111 1111 1111", b"4111111111111111 0528",
            b'{"code":"\\u0034111111111111111"}', "４１１１１１１１１１１１１１１１".encode()],
}
for target, seeds in corpus.items():
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i}"), "wb") as f:
            f.write(s)
