package loadgen

import (
	"fmt"
	"os"
	"testing"
)

// workerEnv makes the test binary act as a worker process, so the
// process split is tested with the real re-exec and pipes.
const workerEnv = "LOADGEN_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		if err := RunWorker(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "test worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testWorkerCommand() (string, []string, []string) {
	return os.Args[0], nil, []string{workerEnv + "=1"}
}
