package bench

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/server"
)

// envBenchDataDir names the data directory of a running "dpsd serve" that
// BenchmarkRegister provisions devices with. Without it the benchmark is
// skipped.
const envBenchDataDir = "DPSD_BENCH_DATA_DIR"

// BenchmarkRegister measures one device registration against a real dpsd:
//
//	dpsd serve --data-dir /tmp/d --https-addr 127.0.0.2:8443 --mqtt-addr 127.0.0.2:8883 &
//	DPSD_BENCH_DATA_DIR=/tmp/d go test ./bench -run '^$' -bench Register
func BenchmarkRegister(b *testing.B) {
	dir := os.Getenv(envBenchDataDir)
	if dir == "" {
		b.Skip("set " + envBenchDataDir + " to the data directory of a running dpsd")
	}
	info, err := server.ReadInfo(dir)
	if err != nil {
		b.Skip(err)
	}
	pem, err := os.ReadFile(info.CACertFile)
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	for _, a := range []string{info.HTTPSAddr, info.MQTTAddr} {
		if err := CheckLoopback(context.Background(), a); err != nil {
			b.Skip(err)
		}
	}
	svc, err := service.New(info.ServiceConnectionString, service.WithCAPool(roots), service.WithDialAddr(info.HTTPSAddr))
	if err != nil {
		b.Fatal(err)
	}
	key, err := SetupGroup(context.Background(), svc, GroupSpec{ID: "go-bench", IoTHubs: []string{"go-bench-hub.example.net"}})
	if err != nil {
		b.Skip("dpsd not reachable: ", err)
	}
	prefix := "gobench-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
	var seq atomic.Int64

	for _, tr := range []string{HTTPS, HTTPSNewConn, MQTT, MQTTWS} {
		b.Run(tr, func(b *testing.B) {
			dt, _ := deviceTransport(tr)
			cfg := device.Config{
				ProvisioningHost: info.HostName,
				DialAddr:         info.HTTPSAddr,
				IDScope:          info.IDScope,
				GroupKey:         key,
				Transport:        dt,
				RootCAs:          roots,
				Timeout:          30 * time.Second,
			}
			if dt == device.TransportMQTT {
				cfg.DialAddr = info.MQTTAddr
			}
			if _, _, err := net.SplitHostPort(cfg.DialAddr); err != nil {
				b.Fatal(err)
			}
			if dt == device.TransportHTTPS {
				hc, err := device.NewHTTPClient(cfg)
				if err != nil {
					b.Fatal(err)
				}
				defer hc.CloseIdleConnections()
				hc.Transport.(*http.Transport).DisableKeepAlives = tr == HTTPSNewConn
				cfg.HTTPClient = hc
			}
			b.SetParallelism(4) // 4×GOMAXPROCS devices at once
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c := cfg
					c.RegistrationID = fmt.Sprintf("%s%d", prefix, seq.Add(1))
					if _, err := device.Register(context.Background(), c); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
