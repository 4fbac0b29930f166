/**
 * `portcullis hash-password` and `portcullis api-key`: the two commands that make the secrets a
 * config file holds only as hashes.
 *
 * hash-password reads the password from stdin: on a terminal it prompts on stderr, twice, with
 * echo off (raw mode); from a pipe it reads everything and drops one trailing newline. It
 * prints `scrypt$N$r$p$salt$hash` for `users[].passwordHash`.
 *
 * api-key prints a new random key (give it to the client) and its `sha256$…` hash (for
 * `apiKeys[].keyHash`).
 */
import { generateApiKey, hashApiKey, hashPasswordSync } from '../plugins/auth/password-hash.js'

/** Read one line from a terminal without echoing it. Null when the user gave up (Ctrl-C, Ctrl-D). */
function readHidden (prompt: string, input: NodeJS.ReadStream, output: NodeJS.WriteStream): Promise<string | null> {
  return new Promise((resolve) => {
    let value = ''
    const wasRaw = input.isRaw
    // Echo off before the prompt shows: a password typed the moment the prompt appears would
    // otherwise be echoed by the terminal (the tty test caught this race under load).
    input.setRawMode(true)
    output.write(prompt)
    input.resume()
    const finish = (result: string | null): void => {
      input.removeListener('data', onData)
      input.setRawMode(wasRaw)
      input.pause()
      output.write('\n')
      resolve(result)
    }
    const onData = (chunk: Buffer): void => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') { finish(value); return }
        if (ch === '\u0003' || (ch === '\u0004' && value === '')) { finish(null); return }
        if (ch === '\u007f' || ch === '\b') { value = [...value].slice(0, -1).join(''); continue }
        if (ch < ' ') continue
        value += ch
      }
    }
    input.on('data', onData)
  })
}

async function readAllStdin (input: NodeJS.ReadStream): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of input) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '')
}

/** Returns the exit code. */
export async function hashPasswordCommand (input: NodeJS.ReadStream = process.stdin, output: NodeJS.WriteStream = process.stdout, errors: NodeJS.WriteStream = process.stderr): Promise<number> {
  let password: string
  if (input.isTTY === true) {
    const first = await readHidden('Password: ', input, errors)
    if (first === null) return 130
    const again = await readHidden('Again: ', input, errors)
    if (again === null) return 130
    if (first !== again) {
      errors.write('portcullis: the passwords do not match\n')
      return 1
    }
    password = first
  } else {
    password = await readAllStdin(input)
  }
  if (password === '') {
    errors.write('portcullis: the password is empty\n')
    return 1
  }
  output.write(hashPasswordSync(password) + '\n')
  return 0
}

export function apiKeyCommand (output: NodeJS.WriteStream = process.stdout): number {
  const key = generateApiKey()
  output.write(`key: ${key}\nkeyHash: ${hashApiKey(key)}\n`)
  return 0
}
