package mqtt

import (
	"context"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// brokerLogHandler passes on the embedded broker's warnings and errors and
// drops its chatter: its informational start-up lines would confuse dpsd's
// operators, and it warns about every keep-alive under 5 s although the C
// SDK uses keep-alive 0 on purpose.
type brokerLogHandler struct{ h slog.Handler }

func (b brokerLogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && b.h.Enabled(ctx, l)
}

func (b brokerLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == mqtt.ErrMinimumKeepalive.Error() {
		return nil
	}
	return b.h.Handle(ctx, r)
}

func (b brokerLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return brokerLogHandler{b.h.WithAttrs(attrs)}
}

func (b brokerLogHandler) WithGroup(name string) slog.Handler {
	return brokerLogHandler{b.h.WithGroup(name)}
}
