package broker

import (
	"context"
	"fmt"

	"go.uber.org/zap"
)

// RedisLogger adapts a *zap.Logger to go-redis's logging interface.
//
// go-redis writes to its own stderr logger, one line per failed dial among
// others, which during an outage means a line per retry; the brokers
// already log each state change once. go-redis's logger is process-wide,
// so this package does not install it: main does, once, with
//
//	redis.SetLogger(broker.NewRedisLogger(log))
//
// and go-redis's lines then go to zap at debug level.
type RedisLogger struct {
	log *zap.Logger
}

// NewRedisLogger returns a RedisLogger writing to log (nil discards).
func NewRedisLogger(log *zap.Logger) *RedisLogger {
	if log == nil {
		log = zap.NewNop()
	}
	return &RedisLogger{log: log.With(zap.String("component", "go-redis"))}
}

// Printf implements go-redis's internal.Logging interface.
func (l *RedisLogger) Printf(_ context.Context, format string, v ...any) {
	if ce := l.log.Check(zap.DebugLevel, ""); ce != nil {
		ce.Message = fmt.Sprintf(format, v...)
		ce.Write()
	}
}
