// Command testsummary reads `go test -json` on its standard input, prints
// what a person needs (each package's result, the output of every test
// that failed, of every package that did not build) and ends with one
// line: how many tests passed, failed and were skipped, and why each
// skipped test skipped. Above that line, one line per skipped test names
// it. It exits 1 when a test or a package failed (a build error, a panic,
// a timeout), or when the input held no test event at all.
//
//	go test -json ./... | go run ./contrib/testsummary
//
// With -progress it also prints a line as each test ends (for long suites:
// make e2e). `make test` runs it; lines that are not JSON events pass
// through.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	progress := flag.Bool("progress", false, "print a line as each test ends")
	flag.Parse()
	s := newSummary(os.Stdout)
	s.progress = *progress
	if err := s.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	if !s.finish() {
		os.Exit(1)
	}
}

// read feeds every line of r to the summary.
func (s *summary) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		s.line(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	return nil
}
