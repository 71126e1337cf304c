package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// goal is the ratio messd must reach over a peer that has one, in every
// round.
const goal = 1.2

// sample is one round of one workload against one peer.
type sample struct {
	Round     int
	Workload  string
	Peer      string
	PeerRate  float64
	MessdRate float64
	Notes     string
}

// Ratio is messd's throughput over the peer's.
func (s sample) Ratio() float64 {
	if s.PeerRate == 0 {
		return math.Inf(1)
	}
	return s.MessdRate / s.PeerRate
}

// formatRate writes a throughput for people: 13,215 or 1.02 M.
func formatRate(x float64) string {
	if math.IsInf(x, 0) || math.IsNaN(x) {
		return "n/a"
	}
	if x >= 1e6 {
		return strconv.FormatFloat(x/1e6, 'f', 2, 64) + " M"
	}
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func formatRatio(x float64) string {
	if math.IsInf(x, 0) || math.IsNaN(x) {
		return "n/a"
	}
	return strconv.FormatFloat(x, 'f', 2, 64)
}

// span writes the smallest and largest of xs as "a–b", or one figure when
// they are equal.
func span(xs []float64, format func(float64) string) string {
	if len(xs) == 0 {
		return ""
	}
	lo, hi := xs[0], xs[0]
	for _, x := range xs[1:] {
		lo, hi = min(lo, x), max(hi, x)
	}
	if format(lo) == format(hi) {
		return format(lo)
	}
	return format(lo) + "–" + format(hi)
}

// printRound writes one workload's lines of a round.
func printRound(w io.Writer, wl workload, ss []sample) {
	for _, s := range ss {
		fmt.Fprintf(w, "  %-7s %-23s %14s   messd %14s   messd/peer %6s  %s\n", s.Workload, s.Peer,
			formatRate(s.PeerRate), formatRate(s.MessdRate), formatRatio(s.Ratio()), wl.unit)
		if s.Notes != "" {
			fmt.Fprintf(w, "          (%s)\n", s.Notes)
		}
	}
}

// printSummary writes every workload and peer's range over the rounds as a
// Markdown table, and whether messd reached its goal in every round.
func printSummary(w io.Writer, ws []workload, ss []sample, rounds int) {
	fmt.Fprintf(w, "summary over %d rounds (lowest–highest round):\n\n", rounds)
	fmt.Fprintln(w, "| workload | peer | peer | messd | messd ÷ peer | ≥ 1.2× in every round |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, wl := range ws {
		for _, p := range wl.peers {
			var peerRates, messdRates, ratios []float64
			for _, s := range ss {
				if s.Workload == wl.name && s.Peer == p.name {
					peerRates = append(peerRates, s.PeerRate)
					messdRates = append(messdRates, s.MessdRate)
					ratios = append(ratios, s.Ratio())
				}
			}
			if len(ratios) == 0 {
				continue
			}
			verdict := "—"
			if p.goal {
				verdict = "yes"
				for _, r := range ratios {
					if r < goal {
						verdict = "no"
					}
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s %s | %s %s | %s | %s |\n", wl.name, p.name,
				span(peerRates, formatRate), wl.unit, span(messdRates, formatRate), wl.unit,
				span(ratios, formatRatio), verdict)
		}
	}
}
