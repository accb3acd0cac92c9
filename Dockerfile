FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -o /walrelay ./cmd/walrelay

FROM debian:bookworm-slim
COPY --from=build /walrelay /usr/local/bin/walrelay
ENTRYPOINT ["walrelay"]
