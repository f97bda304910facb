package allocpolicy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common"
	"github.com/google/cel-go/common/types"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/dpsd/dpsd/api/dps"
)

// Bounds of a policy.
const (
	// MaxSourceBytes bounds a policy's source.
	MaxSourceBytes = 32 << 10
	// DefaultCostLimit bounds one evaluation in CEL cost units (about one
	// per operation, per list element visited): far above what a routing
	// rule needs, far below what would hold a registration noticeably.
	DefaultCostLimit = 1_000_000
	// MaxResultBytes bounds a result, as the webhook client bounds an
	// answer.
	MaxResultBytes = 64 << 10
)

// Prefix is how an enrollment's customAllocationDefinition.webhookUrl
// selects a policy: "policy:NAME".
const Prefix = "policy:"

// NameOf returns the policy name a webhook URL selects, if it selects one.
func NameOf(webhookURL string) (string, bool) {
	u := strings.TrimSpace(webhookURL)
	if len(u) < len(Prefix) || !strings.EqualFold(u[:len(Prefix)], Prefix) {
		return "", false
	}
	return u[len(Prefix):], true
}

// The variables a policy sees, all taken from the request a webhook would
// receive (dps.AllocationRequest):
//
//	request         the whole request, as JSON: individualEnrollment or
//	                enrollmentGroup (keys removed), deviceRuntimeContext,
//	                linkedHubs
//	registrationId  request.deviceRuntimeContext.registrationId
//	payload         the device's payload ({} when it sent none)
//	linkedHubs      the candidate hubs, by host name
//	currentHub      the hub the device is assigned to now ("" for none)
//	enrollment      the individual enrollment or the group, whichever applies
//
// A policy's value is a map, as a webhook's answer: iotHubHostName (one of
// linkedHubs), and optionally initialTwin and payload; or
// {"refuse": "reason"} to refuse the device.
func newEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("request", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("registrationId", cel.StringType),
		cel.Variable("payload", cel.DynType),
		cel.Variable("linkedHubs", cel.ListType(cel.StringType)),
		cel.Variable("currentHub", cel.StringType),
		cel.Variable("enrollment", cel.MapType(cel.StringType, cel.DynType)),
		cel.CrossTypeNumericComparisons(true),
	)
}

// Program is a compiled policy, safe for concurrent use.
type Program struct {
	prg cel.Program
}

// CompileError is a policy that does not compile: the compiler's message,
// with the line and column (1-based) of the first problem.
type CompileError struct {
	Line, Column int
	Message      string
}

func (e *CompileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Message)
	}
	return e.Message
}

// Compile parses and type-checks src, and refuses a policy whose value
// cannot be a map. costLimit <= 0 means DefaultCostLimit.
func Compile(name, src string, costLimit uint64) (*Program, error) {
	if len(src) > MaxSourceBytes {
		return nil, &CompileError{Message: fmt.Sprintf("the policy is %d bytes long; at most %d are allowed", len(src), MaxSourceBytes)}
	}
	if strings.TrimSpace(src) == "" {
		return nil, &CompileError{Message: "the policy is empty"}
	}
	if costLimit == 0 {
		costLimit = DefaultCostLimit
	}
	env, err := newEnv()
	if err != nil {
		return nil, fmt.Errorf("allocation policy environment: %w", err)
	}
	ast, iss := env.CompileSource(common.NewStringSource(src, name))
	if iss != nil && iss.Err() != nil {
		ce := &CompileError{Message: strings.TrimSpace(iss.Err().Error())}
		if errs := iss.Errors(); len(errs) > 0 {
			loc := errs[0].Location
			ce.Line, ce.Column = loc.Line(), loc.Column()+1
		}
		return nil, ce
	}
	switch out := ast.OutputType(); out.Kind() {
	case types.MapKind, types.DynKind:
	default:
		return nil, &CompileError{Line: 1, Column: 1, Message: fmt.Sprintf("the policy's value is a %s; it must be a map such as {\"iotHubHostName\": linkedHubs[0]} or {\"refuse\": \"reason\"}", out)}
	}
	prg, err := env.Program(ast, cel.CostLimit(costLimit), cel.InterruptCheckFrequency(100))
	if err != nil {
		return nil, &CompileError{Message: err.Error()}
	}
	return &Program{prg: prg}, nil
}

// Result is what a policy decided: an answer shaped as a webhook's
// (Response, as JSON), or a refusal with its reason.
type Result struct {
	Response []byte
	Refusal  string
}

// Eval runs the policy on req. An error is a policy that failed at run
// time (a missing key, a cost limit exceeded, a value of the wrong shape);
// it says why, for the allocation log.
func (p *Program) Eval(ctx context.Context, req *dps.AllocationRequest) (*Result, error) {
	raw, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	var request map[string]any
	if err := json.Unmarshal(raw, &request); err != nil {
		return nil, fmt.Errorf("decode request: %w", err)
	}
	var payload any = map[string]any{}
	if rc, ok := request["deviceRuntimeContext"].(map[string]any); ok && rc["payload"] != nil {
		payload = rc["payload"]
	}
	enrollment, _ := request["enrollmentGroup"].(map[string]any)
	if e, ok := request["individualEnrollment"].(map[string]any); ok {
		enrollment = e
	}
	if enrollment == nil {
		enrollment = map[string]any{}
	}
	hubs := req.LinkedHubs
	if hubs == nil {
		hubs = []string{}
	}
	out, _, err := p.prg.ContextEval(ctx, map[string]any{
		"request":        request,
		"registrationId": req.DeviceRuntimeContext.RegistrationID,
		"payload":        payload,
		"linkedHubs":     hubs,
		"currentHub":     req.DeviceRuntimeContext.CurrentIoTHubHostName,
		"enrollment":     enrollment,
	})
	if err != nil {
		return nil, fmt.Errorf("evaluation failed: %w", err)
	}
	v, err := out.ConvertToNative(reflect.TypeFor[*structpb.Value]())
	if err != nil {
		return nil, fmt.Errorf("the policy's value cannot be JSON: %w", err)
	}
	m := v.(*structpb.Value).GetStructValue()
	if m == nil {
		return nil, errors.New("the policy's value is not a map")
	}
	if r, ok := m.Fields["refuse"]; ok {
		if len(m.Fields) != 1 {
			return nil, errors.New(`a refusal is {"refuse": "reason"} and nothing else`)
		}
		reason := r.GetStringValue()
		if reason == "" {
			reason = "(no reason given)"
		}
		return &Result{Refusal: reason}, nil
	}
	for k := range m.Fields {
		switch k {
		case "iotHubHostName", "initialTwin", "payload":
		default:
			return nil, fmt.Errorf("the policy's value has the key %q; want iotHubHostName, initialTwin and payload, or refuse", k)
		}
	}
	// encoding/json over AsMap is a third of protojson's cost here.
	data, err := json.Marshal(m.AsMap())
	if err != nil {
		return nil, fmt.Errorf("encode the policy's value: %w", err)
	}
	if len(data) > MaxResultBytes {
		return nil, fmt.Errorf("the policy's value is %d bytes; at most %d are allowed", len(data), MaxResultBytes)
	}
	return &Result{Response: data}, nil
}
