package server

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
)

// words is prose vocabulary for appwriteDocument's text fields: English
// with the variety of real messages, so that compression ratios are not
// flattered by repetition.
var words = strings.Fields(`the a to and of in is it you that for on was with as have be at not this are but
they from or by one had what all we when your can said there use each which she do how their if will up other
about out many then them these so some her would make like him into time has look two more write go see number
no way could people my than first water been call who oil its now find long down day did get come made may part
meeting report invoice customer shipped delivered tomorrow review draft budget quarter design release backend
frontend deploy server database bucket function message channel update thanks please check attached photo
invite accepted schedule moved friday morning afternoon evening sprint ticket bug fixed merged feature launch`)

// appwriteDocument returns a realistic Appwrite database document of
// exactly size bytes of JSON (size at least 160): system attributes,
// permissions, and user fields whose text is pseudo-random prose
// (deterministic per size).
func appwriteDocument(size int) string {
	rng := rand.New(rand.NewPCG(uint64(size), 7692))
	text := func(n int) string {
		var b strings.Builder
		for b.Len() < n {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(words[rng.IntN(len(words))])
		}
		return b.String()[:n]
	}
	doc := map[string]any{
		"$id": "6551f0c2a8d3e1b4", "$collectionId": "messages", "$databaseId": "chat",
		"$createdAt": "2026-01-14T09:21:44.512+00:00", "$permissions": []string{`read("any")`}, "text": "",
	}
	if size >= 600 {
		doc["$updatedAt"] = "2026-01-14T09:21:44.512+00:00"
		doc["$permissions"] = []string{`read("any")`, `update("user:65a0b1c2d3e4f5a6")`, `delete("user:65a0b1c2d3e4f5a6")`}
		doc["author"], doc["authorName"], doc["room"] = "65a0b1c2d3e4f5a6", "Maria Lopez", "general"
		doc["attachments"] = []map[string]any{{"fileId": "65a0c9d8e7f6a5b4", "bucketId": "uploads", "mimeType": "image/png", "sizeOriginal": 482133}}
		doc["edited"], doc["tags"] = false, []string{"release", "backend"}
	}
	base, _ := json.Marshal(doc)
	doc["text"] = text(size - len(base))
	out, _ := json.Marshal(doc)
	return string(out)
}
