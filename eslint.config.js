import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'node_modules/**', '.tap/**', 'examples/drf/**']
  }),
  {
    rules: {
      // `${ENV_VAR}` in strings is the config file's substitution syntax, not a mistake.
      'no-template-curly-in-string': 'off'
    }
  }
]
