package mqtt

import (
	"strings"
	"testing"
	"time"
)

func TestParseRequestTopic(t *testing.T) {
	tests := []struct {
		topic   string
		want    requestTopic
		wantErr bool
	}{
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=50c76282-0fdc-4bf7-a505-7fe5600ecb0d",
			want: requestTopic{kind: kindRegister, rid: "50c76282-0fdc-4bf7-a505-7fe5600ecb0d"}},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=1", want: requestTopic{kind: kindRegister, rid: "1"}},
		{topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.b736.8c56d18c-877c",
			want: requestTopic{kind: kindOperationStatus, rid: "2", operationID: "4.b736.8c56d18c-877c"}},
		// Parameters in any order, percent-encoded values, unknown ones ignored.
		{topic: "$dps/registrations/GET/iotdps-get-operationstatus/?operationId=4%2Eab%2Ecd&x=y&$rid=a%2Db",
			want: requestTopic{kind: kindOperationStatus, rid: "a%2Db", operationID: "4.ab.cd"}},
		{topic: "$dps/registrations/put/IOTDPS-REGISTER/?$rid=7", want: requestTopic{kind: kindRegister, rid: "7"}},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=7&operationId=ignored",
			want: requestTopic{kind: kindRegister, rid: "7", operationID: "ignored"}},

		{topic: "$dps/registrations/PUT/iotdps-register/", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?rid=1", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=a$b", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=a b", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=" + strings.Repeat("1", maxRIDLen+1), wantErr: true},
		{topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2", wantErr: true},
		{topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=", wantErr: true},
		{topic: "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=%zz", wantErr: true},
		{topic: "$dps/registrations/res/200/?$rid=1", wantErr: true},
		{topic: "$dps/registrations/POST/iotdps-register/?$rid=1", wantErr: true},
		{topic: "devices/x/messages/events/?$rid=1", wantErr: true},
		{topic: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			got, err := parseRequestTopic(tt.topic)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestResponseTopic(t *testing.T) {
	tests := []struct {
		status    int
		rid       string
		retry     time.Duration
		withRetry bool
		want      string
	}{
		{202, "r1", 3 * time.Second, true, "$dps/registrations/res/202/?$rid=r1&retry-after=3"},
		{202, "r1", 1500 * time.Millisecond, true, "$dps/registrations/res/202/?$rid=r1&retry-after=2"},
		{202, "r1", time.Nanosecond, true, "$dps/registrations/res/202/?$rid=r1&retry-after=1"},
		{202, "r1", 0, true, "$dps/registrations/res/202/?$rid=r1&retry-after=0"},
		{202, "r1", -time.Second, true, "$dps/registrations/res/202/?$rid=r1&retry-after=0"},
		{200, "42", 0, false, "$dps/registrations/res/200/?$rid=42"},
		{429, "42", 10 * time.Second, true, "$dps/registrations/res/429/?$rid=42&retry-after=10"},
	}
	for _, tt := range tests {
		if got := responseTopic(tt.status, tt.rid, tt.retry, tt.withRetry); got != tt.want {
			t.Errorf("responseTopic(%d, %q, %v, %v) = %q, want %q", tt.status, tt.rid, tt.retry, tt.withRetry, got, tt.want)
		}
	}
}

func TestParseUsername(t *testing.T) {
	tests := []struct {
		in      string
		want    username
		wantErr bool
	}{
		{in: "0ne00ABC123/registrations/my-device-01/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1",
			want: username{"0ne00ABC123", "my-device-01", "2019-03-31", "azure-iot-provisioning-device/1.9.1"}},
		{in: "0ne00ABC123/registrations/py-device-01/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11.7%3BLinux%20%231%29",
			want: username{"0ne00ABC123", "py-device-01", "2019-03-31", "azure-iot-device-provisioning-py/2.14.0(3.11.7;Linux #1)"}},
		// C SDK: raw ClientVersion.
		{in: "0ne00ABC123/registrations/dev/api-version=2021-06-01&ClientVersion=1.15.0",
			want: username{"0ne00ABC123", "dev", "2021-06-01", "1.15.0"}},
		// Embedded C without ClientVersion; parameters in another order; a raw "/" and "%" in a value.
		{in: "0ne00ABC123/registrations/dev/api-version=2019-03-31", want: username{"0ne00ABC123", "dev", "2019-03-31", ""}},
		{in: "s/REGISTRATIONS/d:1.x_y/ClientVersion=my/app 100%&API-VERSION=2025-07-01-preview",
			want: username{"s", "d:1.x_y", "2025-07-01-preview", "my/app 100%"}},

		{in: "", wantErr: true},
		{in: "0ne00ABC123", wantErr: true},
		{in: "0ne00ABC123/registrations/dev", wantErr: true},
		{in: "0ne00ABC123/registrations/dev/", wantErr: true},
		{in: "0ne00ABC123/registrations/dev/ClientVersion=1", wantErr: true},
		{in: "0ne00ABC123/registrations/dev/api-version=", wantErr: true},
		{in: "/registrations/dev/api-version=1", wantErr: true},
		{in: "s/registrations//api-version=1", wantErr: true},
		{in: "s/devices/dev/api-version=1", wantErr: true},
		{in: "s/registrations/de v/api-version=1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseUsername(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		"$dps/registrations/PUT/iotdps-register/?$rid=50c76282-0fdc-4bf7-a505-7fe5600ecb0d",
		"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.b736.8c56d18c-877c",
		"$dps/registrations/GET/iotdps-get-operationstatus/?operationId=4%2Eab&$rid=a%2Db&x",
		"$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2",
		"$dps/registrations/res/200/?$rid=1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		rt, err := parseRequestTopic(topic)
		if err != nil {
			return
		}
		if rt.kind != kindRegister && rt.kind != kindOperationStatus {
			t.Fatalf("kind %d", rt.kind)
		}
		if rt.kind == kindOperationStatus && rt.operationID == "" {
			t.Fatal("operation-status request without operation id")
		}
		// Whatever the device sent, the response topic must stay
		// parseable by every SDK: Python splits on "$" into exactly three
		// parts, C# wants $rid first, nobody tolerates wildcards.
		for _, withRetry := range []bool{false, true} {
			resp := responseTopic(202, rt.rid, time.Second, withRetry)
			parts := strings.Split(resp, "$")
			if len(parts) != 3 || parts[1] != "dps/registrations/res/202/?" || !strings.HasPrefix(parts[2], "rid="+rt.rid) {
				t.Fatalf("response topic %q splits into %q", resp, parts)
			}
			if strings.ContainsAny(resp, "#+ ") {
				t.Fatalf("response topic %q has a wildcard or space", resp)
			}
			if strings.Count(resp, "&") != map[bool]int{false: 0, true: 1}[withRetry] {
				t.Fatalf("response topic %q has extra parameters", resp)
			}
		}
	})
}

func FuzzParseUsername(f *testing.F) {
	for _, s := range []string{
		"0ne00ABC123/registrations/my-device-01/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-device%2F1.9.1",
		"0ne00ABC123/registrations/dev/api-version=2021-06-01&ClientVersion=1.15.0",
		"s/REGISTRATIONS/d/ClientVersion=a/b&API-VERSION=x",
		"0ne00ABC123/registrations/dev/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseUsername(s)
		if err != nil {
			return
		}
		if u.IDScope == "" || u.RegistrationID == "" || u.APIVersion == "" {
			t.Fatalf("empty field in %+v", u)
		}
		if strings.Contains(u.IDScope, "/") || strings.Contains(u.RegistrationID, "/") {
			t.Fatalf("segment with a slash in %+v", u)
		}
		if !strings.HasPrefix(s, u.IDScope+"/") || !strings.Contains(s, "/"+u.RegistrationID+"/") {
			t.Fatalf("%+v not taken from %q", u, s)
		}
	})
}
