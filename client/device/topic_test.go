package device

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestParseResponseTopic(t *testing.T) {
	tests := []struct {
		topic   string
		want    responseTopic
		wantErr bool
	}{
		{topic: "$dps/registrations/res/202/?$rid=50c76282-0fdc-4bf7-a505-7fe5600ecb0d&retry-after=1",
			want: responseTopic{status: 202, rid: "50c76282-0fdc-4bf7-a505-7fe5600ecb0d", retryAfter: time.Second, hasRetryAfter: true}},
		{topic: "$dps/registrations/res/200/?$rid=6ed4077b", want: responseTopic{status: 200, rid: "6ed4077b"}},
		{topic: "$dps/registrations/res/202/?$rid=1&retry-after=0", want: responseTopic{status: 202, rid: "1", hasRetryAfter: true}},
		{topic: "$dps/registrations/res/429/?retry-after=3&$rid=7", want: responseTopic{status: 429, rid: "7", retryAfter: 3 * time.Second, hasRetryAfter: true}},
		{topic: "$dps/registrations/res/401/?$rid=a%20b", want: responseTopic{status: 401, rid: "a b"}},
		{topic: "$dps/registrations/res/202/?$rid=1&retry-after=soon", want: responseTopic{status: 202, rid: "1"}},
		{topic: "$dps/registrations/res/202/?$rid=1&retry-after=-2", want: responseTopic{status: 202, rid: "1"}},
		{topic: "$dps/registrations/res/202/?$rid=1&retry-after=99999", want: responseTopic{status: 202, rid: "1", retryAfter: maxRetryAfter, hasRetryAfter: true}},
		{topic: "$dps/registrations/res/202/?$rid=1&foo=bar", want: responseTopic{status: 202, rid: "1"}},
		{topic: "$dps/registrations/res/202/?$rid=", want: responseTopic{status: 202}},
		{topic: "$dps/registrations/res/202/?retry-after=1", wantErr: true},
		{topic: "$dps/registrations/res/202/?$rid=1&$rid=2", wantErr: true},
		{topic: "$dps/registrations/res/abc/?$rid=1", wantErr: true},
		{topic: "$dps/registrations/res/99/?$rid=1", wantErr: true},
		{topic: "$dps/registrations/res/202?$rid=1", wantErr: true},
		{topic: "$dps/registrations/PUT/iotdps-register/?$rid=1", wantErr: true},
		{topic: "$dps/registrations/res/202/?$rid=%zz", wantErr: true},
		{topic: "", wantErr: true},
	}
	for _, tc := range tests {
		got, err := parseResponseTopic(tc.topic)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseResponseTopic(%q) error = %v, wantErr %v", tc.topic, err, tc.wantErr)
			continue
		}
		if err == nil && got != tc.want {
			t.Errorf("parseResponseTopic(%q) = %+v, want %+v", tc.topic, got, tc.want)
		}
	}
}

func FuzzParseResponseTopic(f *testing.F) {
	for _, s := range []string{
		"$dps/registrations/res/202/?$rid=50c76282-0fdc-4bf7-a505-7fe5600ecb0d&retry-after=1",
		"$dps/registrations/res/200/?$rid=1",
		"$dps/registrations/res/429/?retry-after=3&$rid=7",
		"$dps/registrations/res/401/?$rid=a%20b&x=y",
		"$dps/registrations/res/202/?$rid=1&retry-after=18446744073709551616",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		rt, err := parseResponseTopic(topic)
		if err != nil {
			return
		}
		if rt.status < 100 || rt.status > 999 {
			t.Fatalf("status %d out of range for %q", rt.status, topic)
		}
		if rt.retryAfter < 0 || rt.retryAfter > maxRetryAfter || (!rt.hasRetryAfter && rt.retryAfter != 0) {
			t.Fatalf("retry-after %v (has %v) for %q", rt.retryAfter, rt.hasRetryAfter, topic)
		}
		// What the parser read must survive the server's way of writing it.
		again := fmt.Sprintf("%s%d/?$rid=%s", topicResponsePrefix, rt.status, url.QueryEscape(rt.rid))
		if rt.hasRetryAfter {
			again += fmt.Sprintf("&retry-after=%d", rt.retryAfter/time.Second)
		}
		rt2, err := parseResponseTopic(again)
		if err != nil || rt2 != rt {
			t.Fatalf("round trip of %q via %q: %+v, %v; want %+v", topic, again, rt2, err, rt)
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Format(httpTimeFormat)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"3", 3 * time.Second, true},
		{" 2 ", 2 * time.Second, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"100000", maxRetryAfter, true},
		{"Wed, 21 Oct 2015 07:28:00 GMT", 0, true}, // in the past: poll now
		{future, maxRetryAfter, true},              // an hour ahead is capped
		{"later", 0, false},
	}
	for _, tc := range tests {
		got, ok := parseRetryAfter(tc.in)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.wantOK)
		}
	}
}

const httpTimeFormat = "Mon, 02 Jan 2006 15:04:05 GMT"

func TestNewRID(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		r := newRID()
		if len(r) != 36 || strings.Count(r, "-") != 4 || seen[r] {
			t.Fatalf("newRID() = %q (seen before: %v)", r, seen[r])
		}
		seen[r] = true
	}
}
