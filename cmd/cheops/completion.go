package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// Completion scripts: they ask cheops itself for candidates through
// urfave/cli's --generate-bash-completion.
const bashCompletion = `# bash completion for cheops: source <(cheops completion bash)
_cheops_complete() {
  local cur words
  cur="${COMP_WORDS[COMP_CWORD]}"
  words=("${COMP_WORDS[@]:1:$COMP_CWORD-1}")
  if [[ "$cur" == -* ]]; then
    COMPREPLY=( $(compgen -W "$(cheops "${words[@]}" "$cur" --generate-bash-completion 2>/dev/null)" -- "$cur") )
  else
    COMPREPLY=( $(compgen -W "$(cheops "${words[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur") )
  fi
}
complete -o default -F _cheops_complete cheops
`

const zshCompletion = `#compdef cheops
# zsh completion for cheops: source <(cheops completion zsh)
_cheops() {
  local -a opts
  local cur=${words[-1]}
  if [[ "$cur" == -* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} "$cur" --generate-bash-completion 2>/dev/null)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
  fi
  compadd -a opts
}
compdef _cheops cheops
`

func init() {
	register(&cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: source <(cheops completion bash)",
		ArgsUsage: "bash|zsh",
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			default:
				return usageError("completion takes bash or zsh, got %q", c.Args().First())
			}
			return nil
		},
	})
}
