package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/internal/hub/builtinhub"
)

// monitorWait is how long one long poll of "monitor-events --follow"
// waits for telemetry before asking again.
const monitorWait = 30 * time.Second

func hubMonitorEventsCmd(cc *clientCmd) *cobra.Command {
	var name, id string
	var follow bool
	var after int64
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "monitor-events",
		Short: "Print the telemetry devices send to a built-in hub, and with --follow keep printing it live",
		Long: `Print the device-to-cloud messages (telemetry) a built-in hub keeps, one JSON
object per message in the shape "az iot hub monitor-events" prints. With
--follow, keep waiting and print each new message as it arrives, until
interrupted (Ctrl-C) or --timeout passes.`,
		Example: `  dpsd hub monitor-events -n contoso-toasters-hub-1098 --follow
  dpsd hub monitor-events -n contoso-toasters-hub-1098 -d breakroom499-contoso-tstrsd-007`,
		Args: cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	f := cmd.Flags()
	f.StringVarP(&id, "device-id", "d", "", "only this device's messages")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new messages as they arrive")
	f.Int64Var(&after, "after", 0, "only messages with a sequence number above this")
	f.DurationVar(&timeout, "timeout", 0, "with --follow, stop after this long (0: until interrupted)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.adminClient()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		if follow && timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		w := cmd.OutOrStdout()
		for {
			var page []builtinhub.Message
			if follow {
				page, err = c.WaitMessages(ctx, name, id, after, monitorWait)
			} else {
				page, err = c.Messages(ctx, name, id, after, 0)
			}
			if err != nil {
				if follow && ctx.Err() != nil {
					return nil // interrupted or timed out: the end of the watch
				}
				return err
			}
			for _, m := range page {
				if err := writeEvent(w, m); err != nil {
					return err
				}
				after = m.SequenceNumber
			}
			if !follow && len(page) == 0 {
				return nil
			}
		}
	}
	return cmd
}

// monitorEvent is one message as "az iot hub monitor-events" prints it.
type monitorEvent struct {
	Event struct {
		Origin     string `json:"origin"`
		Module     string `json:"module"`
		Interface  string `json:"interface"`
		Component  string `json:"component"`
		Payload    any    `json:"payload"`
		Properties struct {
			System      map[string]string `json:"system"`
			Application map[string]string `json:"application"`
		} `json:"properties"`
		Annotations map[string]any `json:"annotations"`
	} `json:"event"`
}

func writeEvent(w io.Writer, m builtinhub.Message) error {
	var ev monitorEvent
	ev.Event.Origin = m.DeviceID
	ev.Event.Interface = m.SystemProperties["interfaceId"]
	ev.Event.Payload = m.Body
	if m.BodyEncoding == "" {
		// JSON bodies are shown as JSON, as az does.
		var v any
		if json.Unmarshal([]byte(m.Body), &v) == nil {
			ev.Event.Payload = v
		}
	}
	ev.Event.Properties.System = nonNilMap(m.SystemProperties)
	ev.Event.Properties.Application = nonNilMap(m.Properties)
	ev.Event.Annotations = map[string]any{
		"iothub-connection-device-id": m.DeviceID,
		"iothub-enqueuedtime":         m.EnqueuedTime.UnixMilli(),
		"x-opt-sequence-number":       m.SequenceNumber,
	}
	return writeJSON(w, ev)
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func hubC2DMessageCmd(cc *clientCmd) *cobra.Command {
	cmd := &cobra.Command{Use: "c2d-message", Short: "Cloud-to-device messages of a built-in hub", Args: cobra.NoArgs}
	var name, id string
	var msg builtinhub.C2DSend
	var props string
	var binary bool
	var expiry time.Duration
	send := &cobra.Command{
		Use:   "send",
		Short: "Send a cloud-to-device message to a device",
		Long: `Queue a cloud-to-device message for a device of a built-in hub. A device
connected over MQTT and subscribed gets it at once; over HTTPS it receives it
with its next poll. A device holds at most 50 waiting messages.`,
		Example: `  dpsd hub c2d-message send -n contoso-toasters-hub-1098 -d breakroom499-contoso-tstrsd-007 \
      --data '{"command":"toast"}' --props 'priority=high;source=cli'`,
		Args: cobra.NoArgs,
	}
	hubNameFlag(send, &name)
	hubDeviceIDFlag(send, &id)
	f := send.Flags()
	f.StringVar(&msg.Body, "data", "", "message body")
	f.BoolVar(&binary, "data-base64", false, "--data is base64 of a binary body")
	f.StringVar(&props, "props", "", "application properties, key0=value0;key1=value1")
	f.StringVar(&msg.MessageID, "message-id", "", "message id (default: generated)")
	f.StringVar(&msg.CorrelationID, "correlation-id", "", "correlation id")
	f.StringVar(&msg.UserID, "user-id", "", "user id")
	f.StringVar(&msg.ContentType, "content-type", "", "content type, e.g. application/json")
	f.StringVar(&msg.ContentEnc, "content-encoding", "", "content encoding, e.g. utf-8")
	f.StringVar(&msg.Ack, "ack", "", "feedback wanted: none, positive, negative or full")
	f.DurationVar(&expiry, "expiry", 0, "time to live (default 1h)")
	send.RunE = func(cmd *cobra.Command, _ []string) error {
		if binary {
			if _, err := base64.StdEncoding.DecodeString(msg.Body); err != nil {
				return fmt.Errorf("--data is not base64: %w", err)
			}
			msg.BodyEncoding = "base64"
		}
		switch msg.Ack {
		case "", "none", "positive", "negative", "full":
		default:
			return fmt.Errorf("--ack must be none, positive, negative or full, not %q", msg.Ack)
		}
		p, err := parseProps(props)
		if err != nil {
			return err
		}
		msg.Properties = p
		if expiry > 0 {
			msg.Expiry = time.Now().Add(expiry).UTC()
		}
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		mid, err := c.SendC2D(cmd.Context(), name, id, &msg)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), map[string]string{"messageId": mid})
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "Message %s queued for %s.\n", mid, id)
		return err
	}
	cmd.AddCommand(send)
	return cmd
}

// parseProps reads az's property list, "key0=value0;key1=value1".
func parseProps(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for part := range strings.SplitSeq(s, ";") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, errors.New("--props must be key0=value0;key1=value1")
		}
		out[strings.TrimSpace(k)] = v
	}
	return out, nil
}
