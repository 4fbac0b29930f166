/**
 * Preloaded into the gateway by `npm run profile` (`node --import …/cpu-profiler.js`): the line
 * `start` on its stdin starts V8's CPU profiler, `stop` stops it and writes the profile to
 * $BENCH_CPU_PROFILE (then `<file>.done`). So the profile covers the measured load only — not
 * start-up, module loading or the warm-up, which `node --cpu-prof` would include. (Not a signal:
 * close-with-grace drains the gateway on SIGUSR2 and most others.)
 */
import { Session } from 'node:inspector'
import { writeFileSync } from 'node:fs'

const file = process.env.BENCH_CPU_PROFILE

if (file !== undefined && file !== '') {
  const session = new Session()
  session.connect()
  process.stdin.setEncoding('utf8')
  process.stdin.on('data', (chunk: string) => {
    if (chunk.includes('start')) {
      session.post('Profiler.enable', () => {
        session.post('Profiler.start', () => { writeFileSync(file + '.started', '') })
      })
    } else if (chunk.includes('stop')) {
      session.post('Profiler.stop', (err, result) => {
        writeFileSync(file, err === null ? JSON.stringify(result.profile) : '')
        writeFileSync(file + '.done', err === null ? '' : String(err))
      })
    }
  })
  process.stdin.unref()
}
