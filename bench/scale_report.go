package bench

import (
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

const mib = 1 << 20

// atMost and atLeast write a figure beside its target with its verdict.
func atMost(got, target float64, format string) string {
	return fmt.Sprintf(format+" ≤ "+format+": %s", got, target, Verdict(got <= target))
}

func atLeast(got, target float64, format string) string {
	return fmt.Sprintf(format+" ≥ "+format+": %s", got, target, Verdict(got >= target))
}

// size names a case in the missed list.
func (c ScaleFigures) size() string {
	return fmt.Sprintf("%d sites × %d resources", c.Sites, c.Resources)
}

// missed lists the case's missed targets. A case that failed misses
// every one of its targets, said once with the error.
func (c ScaleFigures) missed(t ScaleTargets) []string {
	if c.Error != "" {
		return []string{fmt.Sprintf("%s: failed, every target missed: %s", c.size(), c.Error)}
	}
	var out []string
	w := c.Scoped
	if w.Written < c.Resources {
		out = append(out, fmt.Sprintf("%s: only %d resources written within the write budget", c.size(), w.Written))
	}
	if w.Converged > t.ConvergedAfterLastWrite {
		out = append(out, fmt.Sprintf("%s: converged %.0f ms after the last write > %.0f ms", c.size(), ms(w.Converged), ms(t.ConvergedAfterLastWrite)))
	}
	if w.WritesPerSecond < t.WritesPerSecond {
		out = append(out, fmt.Sprintf("%s: %.0f catalog writes/s < %.0f", c.size(), w.WritesPerSecond, t.WritesPerSecond))
	}
	if c.HeapPerSite > t.HeapPerSite {
		out = append(out, fmt.Sprintf("%s: heap %.1f MiB per site > %.1f MiB", c.size(), float64(c.HeapPerSite)/mib, float64(t.HeapPerSite)/mib))
	}
	if fw := c.FirstWrite; fw != nil {
		switch {
		case fw.Samples == 0:
			out = append(out, fmt.Sprintf("%s: first write into a new group not measured: %s", c.size(), fw.Error))
		case fw.P99 > t.FirstWriteP99:
			out = append(out, fmt.Sprintf("%s: first write into a new group seen by its other members in %.1f ms p99 > %.0f ms",
				c.size(), ms(fw.P99), ms(t.FirstWriteP99)))
		}
	}
	if id := c.Idle; id != nil {
		if id.Members == 0 {
			out = append(out, fmt.Sprintf("%s: idle groups not measured: %s", c.size(), id.Error))
			return out
		}
		if id.HeapPerGroupMember > t.IdleHeapPerGroup {
			out = append(out, fmt.Sprintf("%s: an idle group costs %.0f B of heap per member (a second batch's slope) > %.0f B", c.size(), id.HeapPerGroupMember, t.IdleHeapPerGroup))
		}
		if id.GoroutinesPerGroup > t.IdleGoroutinesPerGroup {
			out = append(out, fmt.Sprintf("%s: %.2f goroutines per idle group > %.2f", c.size(), id.GoroutinesPerGroup, t.IdleGoroutinesPerGroup))
		}
		if id.GroupBytesPerGroupMinute > t.IdleBytesPerGroupMinute {
			out = append(out, fmt.Sprintf("%s: an idle group's messages take %.0f bytes per minute > %.0f", c.size(), id.GroupBytesPerGroupMinute, t.IdleBytesPerGroupMinute))
		}
	}
	return out
}

func (p *ScaleProcessFigures) missed() []string {
	switch {
	case p.Skipped != "":
		return nil
	case p.Error != "":
		return []string{fmt.Sprintf("process check (%d agents, %d resources): %s", p.Agents, p.Resources, p.Error)}
	}
	var out []string
	if p.Created+p.Refused < p.Resources {
		out = append(out, fmt.Sprintf("process check (%d agents, %d resources): only %d created within the create budget", p.Agents, p.Resources, p.Created))
	}
	if p.Applications != "ok" {
		out = append(out, fmt.Sprintf("process check (%d agents, %d resources): applications differ from the catalogs: %s", p.Agents, p.Resources, p.Applications))
	}
	return out
}

// Missed lists the targets this run missed, one phrase each (for
// --strict).
func (r *ScaleResult) Missed() []string {
	var out []string
	for _, c := range r.Cases {
		out = append(out, c.missed(r.Options.Targets)...)
	}
	if p := r.Process; p != nil {
		out = append(out, p.missed()...)
	}
	return out
}

// Table prints the figures, each target beside its figure with its
// verdict, and the process and core counts they were measured with.
func (r *ScaleResult) Table(out io.Writer) {
	t := r.Options.Targets
	machine := fmt.Sprintf("%d process, %d cores, GOMAXPROCS %d", r.Processes, r.CPUs, r.GOMAXPROCS)
	fmt.Fprintf(out, "scale (%s; %s)\n\n", r.Setup, machine)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sites\tresources\tgroups\tformed s\twritten\twrite s\twrites/s\tcpu µs/write\tconverged ms\theap/site MiB\tdisk/site MiB\tMiB sent\ttook s\tprocs\tcores\t")
	for _, c := range r.Cases {
		if c.Error != "" && c.Scoped.Written == 0 {
			fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t—\t—\t—\t—\t—\t—\t—\t—\t%.0f\t%d\t%d\t\n", c.Sites, c.Resources, c.Groups, c.Formed.Seconds(),
				c.Took.Seconds(), r.Processes, r.CPUs)
			continue
		}
		w := c.Scoped
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%d\t%.1f\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%.0f\t%d\t%d\t\n", c.Sites, c.Resources, c.Groups, c.Formed.Seconds(),
			w.Written, w.WriteTime.Seconds(), w.WritesPerSecond, float64(w.CPUPerWrite)/float64(time.Microsecond), ms(w.Converged),
			float64(c.HeapPerSite)/mib, float64(c.DiskPerSite)/mib, float64(w.BytesSent)/mib, c.Took.Seconds(), r.Processes, r.CPUs)
	}
	tw.Flush()
	fmt.Fprintln(out, "\nconverged: from the last write accepted until every site holds every entry of its scopes (each site's Watch, then a scan).\n"+
		"cpu µs/write: the process's CPU time (every site, membership included) from the first write until every site's Watch saw its entries (the confirming scan left out), per catalog write.\n"+
		"took: the whole size, from starting its sites to stopping them.")

	fmt.Fprintf(out, "\ntargets (issue 15 sets them for 100 sites × 100,000 resources; every size is held to them; %s)\n", machine)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "sites\tresources\tconverged after the last write ≤ %.0f ms\tcatalog writes/s ≥ %.0f\theap/site ≤ %.0f MiB\tall resources written\t\n",
		ms(t.ConvergedAfterLastWrite), t.WritesPerSecond, float64(t.HeapPerSite)/mib)
	var failed []ScaleFigures
	for _, c := range r.Cases {
		if c.Error != "" {
			fmt.Fprintf(tw, "%d\t%d\tfailed: MISSED\tfailed: MISSED\tfailed: MISSED\tfailed: MISSED\t\n", c.Sites, c.Resources)
			failed = append(failed, c)
			continue
		}
		w := c.Scoped
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%d of %d: %s\t\n", c.Sites, c.Resources,
			atMost(ms(w.Converged), ms(t.ConvergedAfterLastWrite), "%.0f"), atLeast(w.WritesPerSecond, t.WritesPerSecond, "%.0f"),
			atMost(float64(c.HeapPerSite)/mib, float64(t.HeapPerSite)/mib, "%.1f"), w.Written, c.Resources, Verdict(w.Written >= c.Resources))
	}
	tw.Flush()
	for _, c := range failed {
		fmt.Fprintf(out, "%s failed: %s\n", c.size(), c.Error)
	}

	fmt.Fprintf(out, "\nfull replication (one group of all sites; on the same sites, fresh keys, after the scoped figures, the first of their resources; %s)\n", machine)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "sites\tresources\twritten\twrite s\twrites/s\tconverged ms\tMiB sent\tbytes/resource scoped:full\ttime/resource scoped:full\t")
	var fullErrs []string
	for _, c := range r.Cases {
		f := c.Full
		if f == nil {
			fmt.Fprintf(tw, "%d\t%d\tnot run\t\t\t\t\t\t\t\n", c.Sites, c.fullResources())
			continue
		}
		if f.Error != "" {
			fullErrs = append(fullErrs, fmt.Sprintf("%s, full replication: %s", c.size(), f.Error))
		}
		bytesRatio, timeRatio := "—", "—"
		if f.Error == "" && f.Written > 0 && f.BytesSent > 0 && c.Scoped.Written > 0 {
			bytesRatio = fmt.Sprintf("%.2g", float64(c.Scoped.BytesSent)/float64(c.Scoped.Written)/(float64(f.BytesSent)/float64(f.Written)))
		}
		if f.Error == "" && c.Scoped.Error == "" && f.Written > 0 && c.Scoped.Written > 0 {
			scoped := float64(c.Scoped.WriteTime+c.Scoped.Converged) / float64(c.Scoped.Written)
			timeRatio = fmt.Sprintf("%.2g", scoped/(float64(f.WriteTime+f.Converged)/float64(f.Written)))
		}
		conv := fmt.Sprintf("%.0f", ms(f.Converged))
		if f.Error != "" {
			conv = "no"
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.0f\t%s\t%.1f\t%s\t%s\t\n", c.Sites, c.fullResources(), f.Written, f.WriteTime.Seconds(), f.WritesPerSecond,
			conv, float64(f.BytesSent)/mib, bytesRatio, timeRatio)
	}
	tw.Flush()
	for _, e := range fullErrs {
		fmt.Fprintln(out, e)
	}
	fmt.Fprintln(out, "time: write phase plus convergence; the ratios, per resource written, are the issue's comparison, with no target.")

	var probed []ScaleFigures
	for _, c := range r.Cases {
		if c.FirstWrite != nil || c.Idle != nil {
			probed = append(probed, c)
		}
	}
	if len(probed) > 0 {
		fmt.Fprintf(out, "\nfirst write into a brand-new group (2–3 sites no resource or earlier group used), from the start of the Put until every other member's Watch delivered it; %s\n", machine)
		tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "sites\tsamples\ttimed out (5 s)\tp50 ms\tp99 ms ≤ %.0f\t\n", ms(t.FirstWriteP99))
		for _, c := range probed {
			fw := c.FirstWrite
			if fw == nil || fw.Samples == 0 {
				fmt.Fprintf(tw, "%d\t0\t\t\tnot measured: MISSED\t\n", c.Sites)
				continue
			}
			fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%s\t\n", c.Sites, fw.Samples, fw.TimedOut, ms(fw.P50), atMost(ms(fw.P99), ms(t.FirstWriteP99), "%.1f"))
		}
		tw.Flush()
		for _, c := range probed {
			if c.FirstWrite != nil && c.FirstWrite.Error != "" {
				fmt.Fprintf(out, "%d sites: %s\n", c.Sites, c.FirstWrite.Error)
			}
		}

		fmt.Fprintf(out, "\nidle groups (on sites with no other group: a first batch of new groups of 2–3 sites with one write each, then as many again; "+
			"each batch left asleep, its links closed, then its heap read %d times over a window; %s)\n", idleReadings, machine)
		tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "sites\tbatch\tgroups\treplicas\twindow s\theap B per group and member ≤ %.0f\treadings B\tgoroutines per group ≤ %.2f\tprocess goroutines per group\tgroup messages B per group-minute ≤ %.0f\tpairs\tanti-entropy B per pair-minute\t\n",
			t.IdleHeapPerGroup, t.IdleGoroutinesPerGroup, t.IdleBytesPerGroupMinute)
		for _, c := range probed {
			id := c.Idle
			if id == nil || id.Members == 0 {
				fmt.Fprintf(tw, "%d\t\t0\t\t\tnot measured: MISSED\t\tnot measured: MISSED\t\tnot measured: MISSED\t\t\t\n", c.Sites)
				continue
			}
			fmt.Fprintf(tw, "%d\t2nd, slope\t%d\t%d\t%.0f\t%s\t%.0f–%.0f\t%s\t%.2f\t%s\t%d (2nd new: %d)\t%.0f\t\n", c.Sites, id.Groups, id.Members, id.Window.Seconds(),
				atMost(id.HeapPerGroupMember, t.IdleHeapPerGroup, "%.0f"), id.HeapPerGroupMemberMin, id.HeapPerGroupMemberMax,
				atMost(id.GoroutinesPerGroup, t.IdleGoroutinesPerGroup, "%.2f"), id.ProcessGoroutinesPerGroup,
				atMost(id.GroupBytesPerGroupMinute, t.IdleBytesPerGroupMinute, "%.0f"), id.Pairs, id.SecondNewPairs, id.DigestBytesPerPairMinute)
			if f := id.First; f != nil {
				fmt.Fprintf(tw, "%d\t1st, no verdict\t%d\t%d\t%.0f\t%.0f\t%.0f–%.0f\t%.2f\t%.2f\t%.0f\t\t\t\n", c.Sites, f.Groups, f.Members, id.Window.Seconds(),
					f.HeapPerGroupMember, f.HeapPerGroupMemberMin, f.HeapPerGroupMemberMax, f.GoroutinesPerGroup, f.ProcessGoroutinesPerGroup, f.GroupBytesPerGroupMinute)
			}
		}
		tw.Flush()
		fmt.Fprintln(out, "2nd, slope: what the second batch added to the first, per group or replica of the second (the verdicts); "+
			"its groups are drawn among the pairs of sites the first batch already shares, so that what a site keeps per peer it shares groups with is not charged to them (2nd new: pairs it added all the same, when too few such site sets were left); "+
			"1st: the first batch since before any group, which holds the process's one-time growth (goroutine descriptors kept after the writes' burst, pebble's WAL buffers, maps growing).\n"+
			"heap: live heap after a collection (the smaller of two), the smallest reading less the first batch's smallest; readings: the smallest and largest growth of a reading over the first batch's at the same point (1st: over the heap before any group).")
		fmt.Fprintln(out, "goroutines: the fewest of the readings, of those running a group's code (go-ds-crdt's, the crdt package's Group, replica and block exchange, read from the goroutine profile; the verdict), and of the process (the connections' included: they come and go with the peers, not the groups).")
		fmt.Fprintln(out, "group messages: stream bytes of the crdt protocols whose every message names a group (links, blocks): the groups' own periodic work.\n"+
			"anti-entropy: stream bytes of its rounds, one summary of every group two sites share, per pair of sites sharing an idle group (no target: a cost per peer, not per group).\n"+
			"Membership's probes are left out (their jitter on the same hosts exceeds the groups' share).")
		for _, c := range probed {
			if c.Idle != nil && c.Idle.Error != "" {
				fmt.Fprintf(out, "%d sites: %s\n", c.Sites, c.Idle.Error)
			}
		}
	}

	if p := r.Process; p != nil {
		fmt.Fprintf(out, "\nprocess-level check: %d `cheops agent` processes on loopback (a tinyApp behind each, links through the user-space WAN), scopes of 2–3 of them, "+
			"%d resources created through the agents, half before a cut of half of them and half during it on both sides; times from the heal\n", p.Agents, p.Resources)
		switch {
		case p.Skipped != "":
			fmt.Fprintf(out, "skipped: %s\n", p.Skipped)
		case p.Error != "":
			fmt.Fprintf(out, "converged within %v after the heal: MISSED: %s\n", processConvergeWithin, p.Error)
		default:
			tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "agents\tresources\tcreated\tcreates/s\tstarted s\treconnected ms\tcatalogs ms\tapplied ms\tprocs\tcores\t")
			fmt.Fprintf(tw, "%d\t%d\t%d\t%.0f\t%.1f\t%.0f\t%.0f\t%.0f\t%d\t%d\t\n", p.Agents, p.Resources, p.Created, p.CreatesPerSecond, p.Started.Seconds(),
				ms(p.Reconnected), ms(p.Catalog), ms(p.Applied), p.Agents, r.CPUs)
			tw.Flush()
			fmt.Fprintf(out, "created %d of %d (budget %v per half): %s; converged within %v after the heal (the issue sets no time): met; applications hold their scopes' items: %s\n",
				p.Created, p.Resources, p.CreateBudget, Verdict(p.Created+p.Refused >= p.Resources), processConvergeWithin, Verdict(p.Applications == "ok"))
			if p.Applications != "ok" {
				fmt.Fprintln(out, p.Applications)
			}
		}
	}
}

// Plot draws heap per site, and convergence after the last write (scoped
// and fully replicated), against the number of sites.
func (r *ScaleResult) Plot(dir, prefix string) ([]string, error) {
	heap, conv, full := plotter.XYs{}, plotter.XYs{}, plotter.XYs{}
	for _, c := range r.Cases {
		if c.Error != "" {
			continue
		}
		heap = append(heap, plotter.XY{X: float64(c.Sites), Y: float64(c.HeapPerSite) / mib})
		conv = append(conv, plotter.XY{X: float64(c.Sites), Y: ms(c.Scoped.Converged)})
		if c.Full != nil && c.Full.Error == "" {
			full = append(full, plotter.XY{X: float64(c.Sites), Y: ms(c.Full.Converged)})
		}
	}
	var paths []string
	for _, fig := range []struct {
		name, title, y string
		args           []any
	}{
		{"memory", "Go heap per site after convergence", "MiB", []any{"scoped", heap}},
		{"convergence", "Time after the last write until every site holds its entries", "ms", []any{"scoped", conv, "full replication", full}},
	} {
		p := plot.New()
		p.Title.Text = fig.title
		p.X.Label.Text = "sites"
		p.Y.Label.Text = fig.y
		if err := plotutil.AddLinePoints(p, fig.args...); err != nil {
			return nil, fmt.Errorf("bench: plot: %w", err)
		}
		path := filepath.Join(dir, prefix+"-"+fig.name+".svg")
		if err := p.Save(6*vg.Inch, 4*vg.Inch, path); err != nil {
			return nil, fmt.Errorf("bench: save plot: %w", err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}
