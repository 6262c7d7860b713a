#!/usr/bin/env bash
# Start Redis and RabbitMQ on loopback if they are not already answering.
set -u
port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

if ! port_open 6379; then
  if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
fi
# The interop suite runs the real brain under libfaketime (a brain whose clock is off by minutes).
if ! command -v faketime >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
if ! port_open 5672; then
  if ! command -v rabbitmq-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  rabbitmq-server -detached
fi
for _ in $(seq 1 120); do
  port_open 6379 && port_open 5672 && { echo "services: redis and rabbitmq up"; exit 0; }
  sleep 1
done
echo "services: redis or rabbitmq did not come up on 127.0.0.1 (6379, 5672)" >&2
exit 1
