# walrelay: one static binary in a small image, running as a non-root user.
#   docker build -t walrelay .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /walrelay ./cmd/walrelay

FROM debian:bookworm-slim
# ca-certificates for verify-full against public CAs; nothing else is needed.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/walrelay --create-home walrelay
COPY --from=build /walrelay /usr/local/bin/walrelay
USER walrelay
WORKDIR /var/lib/walrelay
VOLUME /var/lib/walrelay
EXPOSE 6432 7001 7101 8081
ENTRYPOINT ["walrelay"]
