// Start s3rver on ADDRESS PORT with its data under DIRECTORY; prints one line once it listens.
// The package ships no command of its own.
const S3rver = require('@20minutes/s3rver')

const [address, port, directory] = process.argv.slice(2)
const server = new S3rver({
  address,
  port: Number(port),
  directory,
  silent: true,
  vhostBuckets: false,
})
server.run((err, where) => {
  if (err) {
    console.error(err)
    process.exit(1)
  }
  console.log(`s3rver listening on ${where.address}:${where.port}`)
})
