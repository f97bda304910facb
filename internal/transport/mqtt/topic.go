package mqtt

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Topics and filters of the DPS device API over MQTT.
const (
	// ResponseFilter is the only filter a device may subscribe to.
	ResponseFilter = "$dps/registrations/res/#"

	registerPath = "$dps/registrations/PUT/iotdps-register/"
	statusPath   = "$dps/registrations/GET/iotdps-get-operationstatus/"
	responsePath = "$dps/registrations/res/"
)

// maxRIDLen bounds the request id a device may send. The id is echoed in the
// response topic, so it must stay small; SDKs send UUIDs or small integers.
const maxRIDLen = 128

// requestKind says which DPS operation a request topic names.
type requestKind int

const (
	kindRegister requestKind = iota + 1
	kindOperationStatus
)

func (k requestKind) String() string {
	switch k {
	case kindRegister:
		return "register"
	case kindOperationStatus:
		return "operationStatus"
	}
	return "unknown"
}

// requestTopic is a parsed request topic.
type requestTopic struct {
	kind requestKind
	// rid is $rid exactly as the device sent it. It is echoed back as is:
	// clients compare the echoed value with what they sent, and Python
	// percent-encodes it, so decoding and re-encoding could change it.
	rid string
	// operationID is the decoded operationId (operation-status requests only).
	operationID string
}

var errNotRequestTopic = errors.New("not a DPS request topic")

// parseRequestTopic parses a register or operation-status request topic:
//
//	$dps/registrations/PUT/iotdps-register/?$rid={rid}
//	$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}
//
// Parameter order does not matter and unknown parameters are ignored.
// Query values may be percent-encoded (Python encodes them).
func parseRequestTopic(topic string) (requestTopic, error) {
	path, query, ok := strings.Cut(topic, "?")
	if !ok {
		return requestTopic{}, errNotRequestTopic
	}
	var rt requestTopic
	switch {
	case strings.EqualFold(path, registerPath):
		rt.kind = kindRegister
	case strings.EqualFold(path, statusPath):
		rt.kind = kindOperationStatus
	default:
		return requestTopic{}, errNotRequestTopic
	}

	var haveRID, haveOp bool
	for part := range strings.SplitSeq(query, "&") {
		key, value, _ := strings.Cut(part, "=")
		switch {
		case key == "$rid":
			if haveRID {
				return requestTopic{}, errors.New("duplicate $rid")
			}
			haveRID = true
			rt.rid = value
		case strings.EqualFold(key, "operationId"):
			if haveOp {
				return requestTopic{}, errors.New("duplicate operationId")
			}
			haveOp = true
			op, err := url.QueryUnescape(value)
			if err != nil {
				return requestTopic{}, fmt.Errorf("operationId: %w", err)
			}
			rt.operationID = op
		}
	}
	if err := validRID(rt.rid); err != nil {
		return requestTopic{}, err
	}
	if rt.kind == kindOperationStatus && rt.operationID == "" {
		return requestTopic{}, errors.New("missing operationId")
	}
	return rt, nil
}

// validRID reports whether rid can be echoed in a response topic without
// breaking any client's topic parser: Python splits the topic on "$", the
// others on "&" and "/", and MQTT forbids wildcards in topic names.
func validRID(rid string) error {
	if rid == "" {
		return errors.New("missing $rid")
	}
	if len(rid) > maxRIDLen {
		return errors.New("$rid too long")
	}
	for _, r := range rid {
		if r <= ' ' || r == 0x7f || strings.ContainsRune("$&/#+", r) {
			return fmt.Errorf("invalid character %q in $rid", r)
		}
	}
	return nil
}

// responseTopic builds $dps/registrations/res/{status}/?$rid={rid}, adding
// &retry-after={seconds} when withRetry is set. $rid must come first (the C#
// SDK's regex) and no other "$" may appear (Python splits on it).
func responseTopic(status int, rid string, retryAfter time.Duration, withRetry bool) string {
	var b strings.Builder
	b.WriteString(responsePath)
	b.WriteString(strconv.Itoa(status))
	b.WriteString("/?$rid=")
	b.WriteString(rid)
	if withRetry {
		b.WriteString("&retry-after=")
		b.WriteString(strconv.FormatInt(retrySeconds(retryAfter), 10))
	}
	return b.String()
}

// retrySeconds rounds d up to whole seconds, because every SDK reads the
// value as an integer and waiting less than the engine asked would only earn
// another "assigning". Zero stays zero: the engine may ask for an immediate poll.
func retrySeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// username is a parsed CONNECT user name.
type username struct {
	IDScope        string
	RegistrationID string
	APIVersion     string
	ClientVersion  string
}

// parseUsername parses {idScope}/registrations/{registrationId}/api-version={V}[&ClientVersion=…].
// The query part may hold further parameters in any order; values may be
// percent-encoded (Node, Python and C# encode ClientVersion, the C SDK does
// not), so a value that does not decode is kept verbatim.
func parseUsername(s string) (username, error) {
	parts := strings.SplitN(s, "/", 4)
	if len(parts) != 4 {
		return username{}, errors.New("want {idScope}/registrations/{registrationId}/api-version={version}")
	}
	u := username{IDScope: parts[0], RegistrationID: parts[2]}
	if !strings.EqualFold(parts[1], "registrations") {
		return username{}, fmt.Errorf("second segment %q is not \"registrations\"", parts[1])
	}
	if err := validIDPart("id scope", u.IDScope); err != nil {
		return username{}, err
	}
	if err := validIDPart("registration id", u.RegistrationID); err != nil {
		return username{}, err
	}
	for part := range strings.SplitSeq(parts[3], "&") {
		key, value, _ := strings.Cut(part, "=")
		if v, err := url.QueryUnescape(value); err == nil {
			value = v
		}
		switch {
		case strings.EqualFold(key, "api-version"):
			if u.APIVersion == "" {
				u.APIVersion = value
			}
		case strings.EqualFold(key, "ClientVersion"):
			if u.ClientVersion == "" {
				u.ClientVersion = value
			}
		}
	}
	if u.APIVersion == "" {
		return username{}, errors.New("missing api-version")
	}
	return u, nil
}

// validIDPart rejects an empty or unprintable id scope or registration id.
// The engine applies the real rules (character set, length); this only keeps
// garbage out of logs and lookups.
func validIDPart(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return fmt.Errorf("invalid character %q in %s", r, what)
		}
	}
	return nil
}
