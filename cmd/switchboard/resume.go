package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/history"
	"github.com/switchboard-rt/switchboard/pkg/server"
)

// feedQueue is how many backbone messages may wait for the Redis
// appender; beyond it the appender's feed counts as lost (a gap is
// recorded), never the router's.
const feedQueue = 1 << 16

// resume builds what resuming needs beside the backbone (RESUME.md): the
// node's own memory when it is alone; with Redis, the shared history and
// records, and the appender that copies the feed into Redis on the node
// that holds a partition's lease. It must run before open, whose broker
// tells the appender of lost messages and carries its marks. The returned
// close function is never nil.
func (b *brokerFlags) resume(window time.Duration, log *zap.Logger) (*server.ResumeConfig, func() error, error) {
	cfg := history.Config{Window: window}
	if b.redisURL == "" {
		store := history.NewMemory(cfg, nil)
		return &server.ResumeConfig{
			Window:  window,
			Reader:  store,
			Records: history.NewMemoryRecords(window, nil),
			Feed: func(project string, msg []byte) {
				_, _ = store.Append(context.Background(), project, msg)
			},
		}, func() error { return nil }, nil
	}
	client, err := b.client()
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: history: %w", err)
	}
	partitions := 0
	if b.sharded {
		partitions = b.partitions
	}
	node, err := appenderID()
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	store, err := history.NewRedis(history.RedisOptions{Client: client, Partitions: partitions, Node: node, Config: cfg})
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	records, err := history.NewRedisRecords(history.RedisRecordsOptions{Client: client, Partitions: partitions, Window: window})
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	// The lease and the appends have a client of their own: a storm of
	// resuming subscriptions reading the history and the records must
	// never keep the lease waiting for a pooled connection (it would
	// lapse, and nobody would append).
	appendClient, err := b.client()
	if err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("--redis-url: history: %w", err)
	}
	appendStore, err := history.NewRedis(history.RedisOptions{Client: appendClient, Partitions: partitions, Node: node, Config: cfg})
	if err != nil {
		client.Close()
		appendClient.Close()
		return nil, nil, err
	}
	lease := history.NewLease(appendStore, 0)
	feed := history.NewFeed(history.NewAppender(appendStore, lease, 0), lease, feedQueue)
	// Sampled: a Redis outage fails every append, up to the event rate.
	sampled := log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Second, 5, 0)
	}))
	feed.OnError = func(project string, err error) {
		sampled.Warn("history append failed", zap.String("project", project), zap.Error(err))
	}
	b.feed = feed
	return &server.ResumeConfig{
		Window:  window,
		Reader:  store,
		Records: records,
		Feed:    feed.Offer,
		Run:     feed.Run,
		Shared:  true,
	}, func() error { return errors.Join(client.Close(), appendClient.Close()) }, nil
}

// wantAll makes a sharded broker hear every partition, which the
// appender needs whatever projects the node serves.
func wantAll(b broker.Broker) {
	if s, ok := b.(*broker.RedisSharded); ok {
		s.WantAll()
	}
}

// appenderID names this process as the holder of the history's leases:
// unique even among processes of one host and port.
func appenderID() (string, error) {
	host, _ := os.Hostname()
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("history: appender id: %w", err)
	}
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(r[:])), nil
}
