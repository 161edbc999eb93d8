# iiot-gateway container image (linux/amd64 and linux/arm64: Raspberry Pi 4/5 with a 64-bit OS).
#   docker build -t iiot-gateway .
#   docker run --rm --network host --read-only -v $PWD/config:/etc/iiot-gateway:ro \
#       -v iiot-state:/var/lib/iiot-gateway iiot-gateway run /etc/iiot-gateway/gateway.yaml
# Serial adapters: --device /dev/serial/by-id/usb-...:/dev/ttyRS485 --group-add dialout
# With Mosquitto beside it: deploy/docker-compose.yml; the whole story: docs/raspberry-pi.md.
# Every dependency has an arm64 wheel (.ci/arm64-wheels), so the arm64 build compiles nothing.
FROM python:3.11-slim

# API_PORT: the port the health check asks; use it in the config too (api.listen: "0.0.0.0:${API_PORT}")
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 API_PORT=8080
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY drivers ./drivers
COPY simulators ./simulators
RUN pip install . && rm -rf /src \
    && useradd --system --home-dir /var/lib/iiot-gateway --create-home iiot

USER iiot
WORKDIR /var/lib/iiot-gateway
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('API_PORT', '8080'), timeout=2)" || exit 1
ENTRYPOINT ["iiot-gateway"]
CMD ["run", "/etc/iiot-gateway/gateway.yaml"]
