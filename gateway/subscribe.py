"""``iiot-gateway sub``: print MQTT messages, for machines without mosquitto_sub."""

from __future__ import annotations

import argparse
import os
import sys

import paho.mqtt.client as mqtt


def main_sub(args: argparse.Namespace) -> int:
    received = 0

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"connect refused: {reason_code}", file=sys.stderr)
            return
        client.subscribe(args.topic, qos=1)

    def on_message(client, userdata, msg):
        nonlocal received
        flag = " (retained)" if msg.retain else ""
        print(f"{msg.topic}{flag} {msg.payload.decode('utf-8', 'replace')}", flush=True)
        received += 1
        if args.count and received >= args.count:
            client.disconnect()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if args.username:
        client.username_pw_set(args.username, os.environ.get(args.password_env or "", None))
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(args.host, args.port, keepalive=30)
    except OSError as exc:
        print(f"cannot reach the broker at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        client.loop_forever(retry_first_connection=True)
    except KeyboardInterrupt:
        pass
    return 0
