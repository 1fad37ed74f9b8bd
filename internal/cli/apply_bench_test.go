package cli

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/config"
	"github.com/switchyard-project/switchyard/internal/control"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// BenchmarkApplyMillionCLI is the CLI's own work in `switchyard apply -f`
// of 1,048,576 bindings into an empty daemon, without the daemon and the
// socket: reading the file, the request's encoding, the reply's decoding
// (a reply of control.AddRequestVersion, which names no binding), the sort
// of the bindings sent that Client.Apply puts in its place (done while the
// daemon works) and the printed diff, each reported in ms per apply.
func BenchmarkApplyMillionCLI(b *testing.B) {
	bs := make([]binding.Binding, config.MaxBindings)
	for i := range bs {
		bs[i] = testenv.ScaleBinding(i, 0)
	}
	data, err := config.Marshal(&config.Config{Version: config.CurrentVersion, Bindings: bs})
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "million.yaml")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		b.Fatal(err)
	}
	env := Env{Open: func(name string) (io.ReadCloser, error) { return os.Open(name) }}
	// The reply of a daemon that had no bindings.
	sorted := slices.Clone(bs)
	binding.Sort(sorted)
	res := &control.ApplyResponse{Applied: true, Diff: control.Diff{AddRequest: true}}
	res.Diff.SetBindings(len(sorted), binding.List(sorted).All, 0, binding.List(nil).All)
	reply, err := control.EncodeReply(&control.Reply{Version: control.AddRequestVersion, Op: control.OpApply, Body: res})
	if err != nil {
		b.Fatal(err)
	}
	sorted, bs, data = nil, nil, nil

	// Wall time and CPU time (of every thread) of each step.
	var wall, cpu [5]time.Duration
	step := func(i int, t0, c0 *time.Duration) {
		t, c := time.Duration(time.Now().UnixNano()), processCPU(b)
		wall[i] += t - *t0
		cpu[i] += c - *c0
		*t0, *c0 = t, c
	}
	for b.Loop() {
		t, c := time.Duration(time.Now().UnixNano()), processCPU(b)
		cfg, err := loadConfig(env, file)
		if err != nil {
			b.Fatal(err)
		}
		req, err := toControlConfig(cfg)
		if err != nil {
			b.Fatal(err)
		}
		step(0, &t, &c)
		if _, err := control.EncodeRequest(control.NewRequest(&control.ApplyRequest{Config: req})); err != nil {
			b.Fatal(err)
		}
		step(1, &t, &c)
		rep, err := control.DecodeReply(reply, 0)
		if err != nil {
			b.Fatal(err)
		}
		step(2, &t, &c)
		d := rep.Body.(*control.ApplyResponse).Diff
		if !d.AddRequest {
			b.Fatal("the reply lists the bindings added")
		}
		d.AddBindings = slices.Clone(req.Bindings)
		binding.Sort(d.AddBindings)
		step(3, &t, &c)
		config.WriteDiff(io.Discard, d.AddBindings, d.RemoveBindings)
		step(4, &t, &c)
	}
	for i, name := range []string{"parse", "encode", "decode", "sort", "print"} {
		b.ReportMetric(float64(wall[i].Milliseconds())/float64(b.N), name+"-ms")
		b.ReportMetric(float64(cpu[i].Milliseconds())/float64(b.N), name+"-cpu-ms")
	}
}

// processCPU is the CPU time, user and system, this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
