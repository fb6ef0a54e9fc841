package main

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/switchboard-rt/switchboard/internal/browsertest"
)

// TestChromiumReceivesCompressedEvents runs the Appwrite Web SDK
// (appwrite@28's browser bundle) in headless Chromium (Debian's chromium,
// driven by npm playwright-core, pinned in test/browser/package-lock.json)
// against a node started here. Chromium offers permessage-deflate; the
// node must agree (RFC 7692), send the documents compressed (its
// metrics say so), and the page must receive them intact. Chromium
// compresses what it sends too, so the node's inflate path runs on a real
// browser's output. Skipped without chromium, node or playwright-core
// (browsertest.Find; required in CI).
func TestChromiumReceivesCompressedEvents(t *testing.T) {
	env := browsertest.Find(t)
	n := startNode(t, "--connects-per-ip", "-1")
	const events = 5
	doc := appwriteDocument(t)
	out := env.Run(t, browsertest.Script{
		Path: "deflate.test.mjs",
		Env: []string{"SWITCHBOARD_ADDR=" + n.addr, "SWITCHBOARD_ADMIN=" + n.admin, "DOC=" + doc,
			"EVENTS=" + strconv.Itoa(events), "SCREENSHOT=" + filepath.Join(t.ArtifactDir(), "deflate.png")},
	})
	t.Logf("node deflate.test.mjs: %s", out)
	// The node's side: every upgrade agreed, the documents went out
	// compressed (each once per event), and what Chromium sent compressed
	// was inflated.
	if got := n.metric(t, "switchboard_deflate_upgrades_total"); got < 1 {
		t.Errorf("%v upgrades negotiated permessage-deflate", got)
	}
	if got := n.metric(t, "switchboard_deflate_deliveries_total"); got < events {
		t.Errorf("%v events went out compressed, want at least %d", got, events)
	}
	plain, wire := n.metric(t, `switchboard_deflate_bytes_total{direction="out",form="plain"}`), n.metric(t, `switchboard_deflate_bytes_total{direction="out",form="deflated"}`)
	if plain < events*float64(len(doc)) || wire >= plain {
		t.Errorf("compressed events: %v bytes before compression, %v after", plain, wire)
	}
	if got := n.metric(t, `switchboard_deflate_bytes_total{direction="in",form="plain"}`); got <= 0 {
		t.Errorf("nothing Chromium sent was inflated (%v bytes)", got)
	}
	t.Logf("events out: %v bytes plain, %v compressed (%.1fx)", plain, wire, plain/wire)
}

// appwriteDocument is a realistic Appwrite database document (1,399 bytes
// of JSON; 1.6 KB as an event message): system attributes, permissions,
// a message with its text, attachments and reactions.
func appwriteDocument(t *testing.T) string {
	t.Helper()
	var text string
	for _, w := range strings.Fields(`Moved the release review to Friday morning; the backend deploy waits for the
		database migration and the bucket permissions fix. Please check the attached photo of the whiteboard,
		the invoice for the customer in Lisbon, and the draft budget for next quarter before the meeting.
		Thanks to everyone who fixed the realtime bug last sprint: the ticket is merged and the feature launches
		tomorrow afternoon if the frontend team signs off on the design.`) {
		text += w + " "
	}
	doc := map[string]any{
		"$id": "6551f0c2a8d3e1b4", "$sequence": 1842, "$collectionId": "messages", "$databaseId": "chat",
		"$createdAt": "2026-01-14T09:21:44.512+00:00", "$updatedAt": "2026-01-14T09:23:02.090+00:00",
		"$permissions": []string{`read("any")`, `update("user:65a0b1c2d3e4f5a6")`, `delete("user:65a0b1c2d3e4f5a6")`},
		"author":       "65a0b1c2d3e4f5a6", "authorName": "Maria Lopez", "room": "general", "text": text,
		"quote": text[:len(text)/2], "edited": true, "tags": []string{"release", "backend", "q3"},
		"attachments": []map[string]any{
			{"fileId": "65a0c9d8e7f6a5b4", "bucketId": "uploads", "name": "whiteboard.png", "mimeType": "image/png", "sizeOriginal": 482133},
			{"fileId": "65a0c9d8e7f6a5b5", "bucketId": "uploads", "name": "invoice-2026-01.pdf", "mimeType": "application/pdf", "sizeOriginal": 91240},
		},
		"reactions": map[string]int{"thumbsup": 3, "eyes": 1},
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
