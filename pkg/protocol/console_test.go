package protocol

import "testing"

// TestCheckConsoleOnly follows Appwrite's subscribe handler
// (src/Appwrite/Realtime/Message/Handlers/Subscribe.php, action) and
// EventTailRegistry::projectFromChannel: console.tail.<project> with a
// project id is console-only; the prefix alone, or a channel merely like
// it, is any connection's.
func TestCheckConsoleOnly(t *testing.T) {
	for _, tc := range []struct {
		project  string
		channels []string
		refused  bool
	}{
		{"p1", []string{"files", "console.tail.p2"}, true},
		{"p1", []string{"console.tail.p1"}, true},
		{"p1", []string{"console.tail.x.y"}, true},
		{"p1", []string{"console.tail."}, false},
		{"p1", []string{"console.tail", "console.tails.p2", "Console.tail.p2", "project", "console"}, false},
		{"console", []string{"console.tail.p2"}, false},
		{"Console", []string{"console.tail.p2"}, true},
	} {
		err := CheckConsoleOnly(tc.project, tc.channels)
		if !tc.refused {
			if err != nil {
				t.Errorf("%s %q: %v, want none", tc.project, tc.channels, err)
			}
			continue
		}
		wantError(t, err, CodePolicyViolation, "Console live tail is only available on the console connection.")
	}
}
