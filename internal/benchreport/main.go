package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ratio is a figure the project tracks: num/den of one unit.
type ratio struct {
	name, num, den, unit string
}

var ratios = []ratio{
	{"lookup_100k_vs_empty", "Lookup/bindings=100000/net-any", "Lookup/empty", "ns/lookup"},
	{"lookup_100k_vs_empty_host", "Lookup/bindings=100000/host-port", "Lookup/empty", "ns/lookup"},
	{"lookup_100k_vs_empty_range", "Lookup/bindings=100000/net-range", "Lookup/empty", "ns/lookup"},
	{"lookup_100k_vs_1", "Lookup/bindings=100000/net-any", "Lookup/bindings=1/net-any", "ns/lookup"},
	{"lookup_100k_vs_1_host", "Lookup/bindings=100000/host-port", "Lookup/bindings=1/host-port", "ns/lookup"},
	{"lookup_100k_vs_1_range", "Lookup/bindings=100000/net-range", "Lookup/bindings=1/net-range", "ns/lookup"},
	{"status_p50_flood_vs_idle", "StatusUnderListingFlood/flood", "StatusUnderListingFlood/idle", "ms-p50"},
	{"status_p99_flood_vs_idle", "StatusUnderListingFlood/flood", "StatusUnderListingFlood/idle", "ms-p99"},
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	samples := map[string]map[string][]float64{} // name -> unit -> values
	var order []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		name, metrics, ok := parseLine(sc.Text())
		if !ok {
			continue
		}
		if samples[name] == nil {
			samples[name] = map[string][]float64{}
			order = append(order, name)
		}
		for unit, v := range metrics {
			samples[name][unit] = append(samples[name][unit], v)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark results on input")
	}
	med := func(name, unit string) (float64, int, bool) {
		vs := samples[name][unit]
		if len(vs) == 0 {
			return 0, 0, false
		}
		s := slices.Clone(vs)
		slices.Sort(s)
		n := len(s)
		if n%2 == 1 {
			return s[n/2], n, true
		}
		return (s[n/2-1] + s[n/2]) / 2, n, true
	}
	runs := 0
	for _, name := range order {
		units := make([]string, 0, len(samples[name]))
		for u := range samples[name] {
			units = append(units, u)
		}
		slices.Sort(units)
		for _, u := range units {
			v, n, _ := med(name, u)
			if n != runs {
				runs = n
				fmt.Fprintf(out, "# medians of %d runs\n", n)
			}
			fmt.Fprintf(out, "%s %s %s\n", name, strconv.FormatFloat(v, 'g', 4, 64), u)
		}
	}
	saidTargets := false
	for _, r := range ratios {
		a, _, ok1 := med(r.num, r.unit)
		b, _, ok2 := med(r.den, r.unit)
		if !ok1 || !ok2 || b == 0 {
			continue
		}
		if !saidTargets {
			saidTargets = true
			fmt.Fprintln(out, "# ratios of medians from the same run; targets: lookup_100k_vs_empty <= 4, lookup_100k_vs_1 <= 1.3")
		}
		fmt.Fprintf(out, "%s %.2f ratio\n", r.name, a/b)
	}
	return nil
}

// parseLine reads a `go test -bench` result line.
func parseLine(line string) (string, map[string]float64, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return "", nil, false
	}
	name := strings.TrimPrefix(f[0], "Benchmark")
	if i := strings.LastIndex(name, "-"); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			name = name[:i]
		}
	}
	m := map[string]float64{}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return "", nil, false
		}
		m[f[i+1]] = v
	}
	return name, m, true
}
