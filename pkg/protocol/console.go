package protocol

import "strings"

// msgConsoleTail is Appwrite's answer to a console live tail channel asked
// for on a project connection.
const msgConsoleTail = "Console live tail is only available on the console connection."

// CheckConsoleOnly answers as Appwrite's subscribe handler
// (src/Appwrite/Realtime/Message/Handlers/Subscribe.php) does when a
// connection to project asks for channels: a console live tail channel
// (IsConsoleTail) is only for connections to the console project, and on any
// other it is a policy violation, 1008 "Console live tail is only available
// on the console connection.". Appwrite checks every entry of the message
// before it subscribes any, so the caller subscribes none.
func CheckConsoleOnly(project string, channels []string) error {
	if project == ConsoleProject {
		return nil
	}
	for _, ch := range channels {
		if IsConsoleTail(ch) {
			return &Error{Code: CodePolicyViolation, Message: msgConsoleTail}
		}
	}
	return nil
}

// ConsoleProject is the id of Appwrite's console project, the one the
// Console's own connections name.
const ConsoleProject = "console"

// consoleTailPrefix starts the console live tail channel of a project,
// console.tail.<projectId> (Appwrite's CONSOLE_TAIL_CHANNEL_PREFIX and a
// dot).
const consoleTailPrefix = "console.tail."

// IsConsoleTail reports whether channel is a console live tail channel:
// the prefix console.tail. and a project id that is not empty, as Appwrite's
// EventTailRegistry::projectFromChannel has it ("console.tail." alone is an
// ordinary channel).
func IsConsoleTail(channel string) bool {
	return len(channel) > len(consoleTailPrefix) && strings.HasPrefix(channel, consoleTailPrefix)
}
