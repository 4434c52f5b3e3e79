package benchtool

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// report is the result of one scenario run, printed as a table or JSON.
type report struct {
	Scenario  string           `json:"scenario"`
	Protocol  string           `json:"protocol"`
	Started   time.Time        `json:"started"`
	Machine   machineInfo      `json:"machine"`
	Params    map[string]any   `json:"params"`
	Targets   []string         `json:"targets"`
	Connect   *connectResult   `json:"connect,omitempty"`
	Idle      []idleTarget     `json:"idle,omitempty"`
	Steps     []fanoutStep     `json:"steps,omitempty"`
	Best      *fanoutStep      `json:"best,omitempty"`
	Reconnect *reconnectResult `json:"reconnect,omitempty"`
	ServerCPU float64          `json:"server_cpu_cores,omitempty"`
	Bench     benchCost        `json:"bench"`
	Dropped   int64            `json:"dropped_connections"`
	Errors    map[string]int64 `json:"errors,omitempty"`
	Headline  []headline       `json:"headline"`
}

type machineInfo struct {
	CPUs     int    `json:"nproc"`
	CPUModel string `json:"cpu_model"`
	Go       string `json:"bench_go"`
	Kernel   string `json:"kernel"`
}

type benchCost struct {
	CPU        float64 `json:"cpu_cores,omitempty"`
	RSSPerConn float64 `json:"rss_bytes_per_conn,omitempty"`
}

// headline is a figure compare puts side by side.
type headline struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Better string  `json:"better"` // "higher" or "lower"
}

func (r *report) headline(name string, v float64, unit, better string) {
	r.Headline = append(r.Headline, headline{Name: name, Value: v, Unit: unit, Better: better})
}

func newReport(cfg *config, p protocol) *report {
	rep := &report{
		Scenario: cfg.scenario,
		Protocol: p.name(),
		Started:  time.Now().UTC(),
		Machine:  machine(),
		Params:   cfg.params(),
	}
	rep.Targets = append(rep.Targets, cfg.targets...)
	return rep
}

func machine() machineInfo {
	m := machineInfo{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func kb(b float64) string { return fmt.Sprintf("%.1f KB", b/1000) }

func mb(b int64) string {
	if b < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MB", float64(b)/1e6)
}

func num(v int64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprint(v)
}

// writeTable prints the report for people.
func (r *report) writeTable(w io.Writer) {
	fmt.Fprintf(w, "%s (%s protocol) against %s\n", r.Scenario, r.Protocol, strings.Join(r.Targets, ", "))
	fmt.Fprintf(w, "machine: %d CPUs, %s, kernel %s\n", r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Kernel)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if c := r.Connect; c != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "opened\tfailed\telapsed\tper second\thandshake p50\tp90\tp99\tmax\t")
		fmt.Fprintf(tw, "%d\t%d\t%.2fs\t%.0f\t%.2fms\t%.2fms\t%.2fms\t%.2fms\t\n",
			c.Opened, c.Failed, c.Elapsed, c.PerSec, c.Latency.P50, c.Latency.P90, c.Latency.P99, c.Latency.Max)
		tw.Flush()
	}
	if len(r.Idle) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "target\tpid\tconns\tRSS before\tRSS after\tRSS/conn\theap/conn\tstack/conn\tgoroutines before\tafter\tper conn\tidle CPU\t")
		for _, it := range r.Idle {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.3f cores\t\n",
				it.Target, it.PID, it.Conns, mb(it.Before.RSS), mb(it.After.RSS), kb(it.RSSPerConn),
				kb(it.HeapPerConn), kb(it.StackPer), num(it.Before.Goroutines), num(it.After.Goroutines), it.GoroutPer, it.IdleCPU)
		}
		tw.Flush()
		fmt.Fprintf(w, "bench RSS per connection: %s\n", kb(r.Bench.RSSPerConn))
	}
	if len(r.Steps) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "rate/s\tsubs\tpublished\tdelivered\t%\tdeliveries/s\tp50\tp90\tp99\tmax\tserver CPU\tper CPU-s\tbench CPU\tpass\t")
		for _, s := range r.Steps {
			perCPU := "-"
			if s.ServerCPU > 0 {
				perCPU = fmt.Sprintf("%.0f", s.PerSec/s.ServerCPU)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.2f\t%.0f\t%.2fms\t%.2fms\t%.2fms\t%.1fms\t%.2f\t%s\t%.2f\t%s\t\n",
				rateName(s.Rate), s.Subscribers, s.Published, s.Delivered, s.DeliveredPct, s.PerSec,
				s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.Max, s.ServerCPU, perCPU, s.BenchCPU, yesNo(s.Pass))
		}
		tw.Flush()
		if r.Best != nil {
			fmt.Fprintf(w, "best passing step (p99 ≤ %v, ≥ 99.9%% delivered, no drops): %.0f deliveries/s at %s publishes/s, p99 %.2fms\n",
				r.Params["p99_limit"], r.Best.PerSec, rateName(r.Best.Rate), r.Best.Latency.P99)
		} else {
			fmt.Fprintln(w, "no step passed")
		}
	}
	if rc := r.Reconnect; rc != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "clients\tmissed\tresumed\tfailed\tall resumed after\tper second\thandshake p50\tp99\tdone p50\tp99\tgap fill events\tgaps\tdups\tno resumed\t")
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%.2fs\t%.0f\t%.2fms\t%.2fms\t%.0fms\t%.0fms\t%d\t%d\t%d\t%d\t\n",
			rc.Clients, rc.Missed, rc.Resumed, rc.Failed, rc.AllResumedS, rc.PerSec, rc.Handshake.P50, rc.Handshake.P99,
			rc.Complete.P50, rc.Complete.P99, rc.Filled, rc.Gaps, rc.Duplicates, rc.NoResumed)
		tw.Flush()
	}
	if r.ServerCPU > 0 || r.Bench.CPU > 0 {
		fmt.Fprintf(w, "server CPU %.2f cores, bench CPU %.2f cores\n", r.ServerCPU, r.Bench.CPU)
	}
	if r.Dropped > 0 {
		fmt.Fprintf(w, "connections dropped by the server or the network: %d\n", r.Dropped)
	}
	if len(r.Errors) > 0 {
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintln(w, "errors:")
		for _, k := range keys {
			fmt.Fprintf(w, "  %d × %s\n", r.Errors[k], k)
		}
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// compareReports prints the headline figures of several reports side by
// side, with each one's ratio to the first.
func compareReports(w io.Writer, names []string, reps []*report) {
	if len(reps) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := "metric\t"
	for _, n := range names {
		head += n + "\t"
	}
	for _, n := range names[1:] {
		head += names[0] + "/" + n + "\t"
	}
	fmt.Fprintln(tw, head+"better\t")
	seen := map[string]bool{}
	for _, rep := range reps {
		for _, h := range rep.Headline {
			if seen[h.Name] {
				continue
			}
			seen[h.Name] = true
			line := h.Name + "\t"
			vals := make([]float64, len(reps))
			found := make([]bool, len(reps))
			for i, r := range reps {
				for _, h2 := range r.Headline {
					if h2.Name == h.Name {
						vals[i], found[i] = h2.Value, true
					}
				}
				if found[i] {
					line += formatValue(vals[i], h.Unit) + "\t"
				} else {
					line += "-\t"
				}
			}
			for i := 1; i < len(reps); i++ {
				if found[0] && found[i] && vals[i] != 0 {
					line += fmt.Sprintf("%.2f×\t", vals[0]/vals[i])
				} else {
					line += "-\t"
				}
			}
			fmt.Fprintln(tw, line+h.Better+"\t")
		}
	}
	tw.Flush()
}

func formatValue(v float64, unit string) string {
	switch unit {
	case "B":
		return kb(v)
	case "/s":
		return fmt.Sprintf("%.0f/s", v)
	case "ms":
		return fmt.Sprintf("%.2fms", v)
	case "s":
		return fmt.Sprintf("%.2fs", v)
	case "cores":
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
