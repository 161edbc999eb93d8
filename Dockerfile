# iiot-gateway container image (linux/amd64 and linux/arm64: Raspberry Pi 4/5 with a 64-bit OS).
#   docker build -t iiot-gateway .
#   docker run --rm --network host -v $PWD/config:/etc/iiot-gateway:ro -v iiot-state:/var/lib/iiot-gateway \
#       iiot-gateway run /etc/iiot-gateway/gateway.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY drivers ./drivers
COPY simulators ./simulators
RUN pip install . && rm -rf /src \
    && useradd --system --home-dir /var/lib/iiot-gateway --create-home iiot

USER iiot
WORKDIR /var/lib/iiot-gateway
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=2)" || exit 1
ENTRYPOINT ["iiot-gateway"]
CMD ["run", "/etc/iiot-gateway/gateway.yaml"]
