package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// defaultPublishTimeout bounds a publish when --timeout is not given (or 0).
const defaultPublishTimeout = 10 * time.Second

// appwriteTime is the timestamp layout Appwrite publishes.
const appwriteTime = "2006-01-02T15:04:05.000-07:00"

// publishCmd builds one backbone message from flags, sends it to a node's
// admin API (or straight to Redis with --redis-url) and prints what it sent.
func publishCmd(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usageWithEnv(fs, "switchboard publish --project P --channels C[,C...] [flags]")
	var (
		admin, apiKey, project, roles, channels, events, payload, userID string
		permissionsChanged                                               bool
		timeout                                                          time.Duration
		bf                                                               brokerFlags
	)
	fs.StringVar(&admin, "admin", "http://127.0.0.1:9506", "admin base URL of a node (unused with --redis-url)")
	fs.StringVar(&apiKey, "api-key", "", "bearer key of the node's POST /v1/publish")
	fs.StringVar(&project, "project", "", "project id (required)")
	fs.StringVar(&roles, "roles", "any", "comma-separated roles that may read the event")
	fs.StringVar(&channels, "channels", "", "comma-separated channels (required unless --permissions-changed)")
	fs.StringVar(&events, "events", "", "comma-separated event names")
	fs.StringVar(&payload, "payload", "{}", "payload JSON, or @FILE to read it from a file")
	fs.StringVar(&userID, "user-id", "", "user id (with --permissions-changed)")
	fs.BoolVar(&permissionsChanged, "permissions-changed", false, "mark the message as a permission change of --user-id")
	fs.DurationVar(&timeout, "timeout", defaultPublishTimeout, "bound on the whole request")
	bf.register(fs)
	if err := parseFlags(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "switchboard publish:", err)
		return 2
	}
	if err := flagDefault("timeout", &timeout, defaultPublishTimeout); err != nil {
		fmt.Fprintln(stderr, "switchboard publish:", err)
		return 2
	}
	if strings.HasPrefix(payload, "@") {
		b, err := os.ReadFile(payload[1:])
		if err != nil {
			fmt.Fprintln(stderr, "switchboard publish: --payload:", err)
			return 2
		}
		payload = string(b)
	}
	ts, _ := json.Marshal(time.Now().UTC().Format(appwriteTime))
	ev := &protocol.Event{
		Project: project, Roles: splitList(roles), Channels: splitList(channels), Events: splitList(events),
		UserID: userID, PermissionsChanged: permissionsChanged,
		Timestamp: ts, Payload: json.RawMessage(bytes.TrimSpace([]byte(payload))),
	}
	msg, err := protocol.MarshalEvent(ev)
	if err != nil {
		fmt.Fprintln(stderr, "switchboard publish:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if bf.redisURL != "" {
		err = publishRedis(ctx, &bf, msg)
	} else {
		err = postEvent(ctx, admin, apiKey, msg)
	}
	if err != nil {
		fmt.Fprintln(stderr, "switchboard publish:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", msg)
	return 0
}

// publishRedis PUBLISHes msg straight to the Redis backbone.
func publishRedis(ctx context.Context, bf *brokerFlags, msg []byte) error {
	b, closeBroker, err := bf.open(zap.NewNop(), nil)
	if err != nil {
		return err
	}
	defer closeBroker()
	return b.Publish(ctx, msg)
}

// postEvent hands msg to a node's POST /v1/publish.
func postEvent(ctx context.Context, admin, apiKey string, msg []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(admin, "/")+"/v1/publish", bytes.NewReader(msg))
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST %s: %s: %s", req.URL, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}
